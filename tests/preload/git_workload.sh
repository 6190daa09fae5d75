#!/bin/bash
# A deterministic git workload in a throw-away repository: commits, branches,
# a merge, log/diff/blame/grep, then gc (which packs, deltifies and runs
# several git processes) and fsck. Fixed names, emails and dates make every
# hash reproducible; HOME and the config variables keep the user's and the
# system's git configuration out. Prints no paths and nothing timing-dependent.
set -eu
work=$(mktemp -d "${TMPDIR:-/tmp}/smalloc-git.XXXXXX")
trap 'rm -rf "$work"' EXIT
export HOME=$work GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null LC_ALL=C TZ=UTC
export GIT_AUTHOR_NAME=Ada GIT_AUTHOR_EMAIL=ada@example.com
export GIT_COMMITTER_NAME=Bob GIT_COMMITTER_EMAIL=bob@example.com
tick=1700000000
commit() {  # each commit a minute after the previous one
  tick=$((tick + 60))
  GIT_AUTHOR_DATE="@$tick +0000" GIT_COMMITTER_DATE="@$tick +0000" git commit -q "$@"
}

cd "$work"
git init -q -b main repo
cd repo
git config gc.auto 0          # gc only when we ask for it
git config pack.threads 2     # fixed, so packing does not depend on the machine

for i in $(seq 1 50); do
  seq 1 $((i * 200)) | awk -v i="$i" '{ print "file" i " line " $1 " " ($1 * i) % 97 }' >"f$((i % 7)).txt"
  mkdir -p "dir$((i % 3))"
  printf 'commit %d\n%s\n' "$i" "$(seq -s, 1 "$i")" >"dir$((i % 3))/notes$i.md"
  git add -A
  commit -m "change $i" -m "Body of commit $i."
done
git checkout -q -b feature HEAD~10
for i in 1 2 3; do echo "feature $i" >>feature.txt; git add feature.txt; commit -m "feature $i"; done
git checkout -q main
tick=$((tick + 60))
GIT_AUTHOR_DATE="@$tick +0000" GIT_COMMITTER_DATE="@$tick +0000" git merge -q --no-edit feature

echo "== log"; git log --oneline --graph | head -n 40
echo "== stat"; git log --stat -n 3 | md5sum
echo "== diff"; git diff --stat HEAD~20 HEAD; git diff HEAD~20 HEAD | md5sum
echo "== blame"; git blame -s f3.txt | tail -n 5
echo "== grep"; git grep -c 'line 1' | head -n 5
echo "== show"; git show --format='%H %an %cn %s' --no-patch HEAD~5
echo "== gc"; git gc -q --aggressive --prune=now
git count-objects -v | grep -E '^(count|in-pack|packs|garbage):'
git verify-pack -v .git/objects/pack/*.idx | awk '$2 ~ /^(commit|tree|blob)$/ { n[$2]++ } END { for (t in n) print t, n[t] }' | sort
echo "== fsck"; git fsck --full --strict --no-progress 2>&1 && echo fsck ok
echo "== archive"; git archive --format=tar HEAD | md5sum
echo "== rev-list"; git rev-list --all --objects | sort | md5sum
