#!/bin/bash
# A deterministic bash workload: bash allocates for every variable, array
# element, word expansion and string operation, and forks for every subshell
# and command substitution, so both the parent's heap and forked children's
# heaps get exercised. Prints results that must not depend on the allocator.
set -eu

# Indexed arrays: append, slice, delete, reverse.
declare -a nums=()
for ((i = 0; i < 20000; i++)); do nums+=($(( (i * 7919) % 10007 ))); done
for ((i = 0; i < ${#nums[@]}; i += 3)); do unset 'nums[i]'; done
nums=("${nums[@]}")
sum=0; for n in "${nums[@]}"; do ((sum += n)); done
echo "array: count=${#nums[@]} sum=$sum slice=${nums[*]:100:5}"

# Associative arrays: word counts over a generated text.
declare -A count=()
words=(alpha beta gamma delta epsilon zeta eta theta iota kappa)
for ((i = 0; i < 30000; i++)); do
  w=${words[i % 10]}${words[(i / 10) % 10]}
  count[$w]=$(( ${count[$w]:-0} + 1 ))
done
keys=$(printf '%s\n' "${!count[@]}" | LC_ALL=C sort | head -n 3 | tr '\n' ' ')
echo "assoc: keys=${#count[@]} first=$keys alphabeta=${count[alphabeta]}"
unset count

# String operations: growth, substitution, case, substrings, trimming.
s=""
for ((i = 0; i < 5000; i++)); do s+="x${i}y"; done
t=${s//x/X}; u=${t^^}; v=${s:1000:40}; w=${s%%y*}; z=${s##*x}
echo "strings: len=${#s} X=${#t} upper=${u:0:20} sub=$v head=$w tail=$z"
printf -v padded '%08d|%-6s|%x' 42 ab 255
echo "printf: $padded"

# Subshells and command substitution (each one a fork of this heap).
total=0
for ((i = 0; i < 200; i++)); do
  r=$( (echo $((i * i))) )
  total=$((total + r))
done
echo "subshells: total=$total"
lines=$(for i in {1..3000}; do echo "line $i"; done | ( while read -r a b; do echo "$b $a"; done ) | tail -n 1)
echo "pipeline: $lines"

# Functions, recursion, local variables, here-strings.
fib() { local n=$1; if ((n < 2)); then echo "$n"; else echo $(( $(fib $((n - 1))) + $(fib $((n - 2))) )); fi; }
echo "fib: $(fib 15)"
read -r -a split <<<"$(seq 1 2000 | tr '\n' ' ')"
echo "split: ${#split[@]} last=${split[-1]}"
