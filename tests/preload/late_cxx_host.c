// A C program (no C++ runtime at start-up) that loads C++ code later with
// dlopen: late_cxx_host MODULE. Exits 0 if all four checks of run() pass.
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  void* module = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!module) {
    printf("dlopen: %s\n", dlerror());
    return 2;
  }
  int (*run)(void) = (int (*)(void))dlsym(module, "run");
  if (!run) return 2;
  int ok = run();
  printf("%d of 4 checks passed\n", ok);
  return ok == 4 ? 0 : 1;
}
