# Turns a file into a C++ source defining its bytes, so the dashboard is part of
# the library and nothing is read from disk at run time.
#   cmake -DINPUT=web/index.html -DOUTPUT=dashboard.cpp -DSYMBOL=kDashboard -P embed.cmake
file(READ "${INPUT}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE "${OUTPUT}"
  "// Generated from ${INPUT} by introspect/embed.cmake.\n#include <cstddef>\n"
  "extern const unsigned char ${SYMBOL}[] = {${bytes} 0};\n"
  "extern const std::size_t ${SYMBOL}Size = sizeof(${SYMBOL}) - 1;\n")
