#!/usr/bin/env python3
"""CPU time of named process trees, for bench/run-relay.sh.
Usage: ticks.py NAME=PID [NAME=PID ...]
Prints one line "NAME=TICKS NAME=TICKS ...": utime+stime (USER_HZ ticks, all
threads) of every live process in the tree rooted at PID (PID and its
descendants), read from /proc/<pid>/stat. A PID of 0 or "-" gives 0. A NAME
ending in "-sys" counts stime alone (the kernel's share)."""
import os
import sys


def children_map():
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    return children


def tree(root, children):
    seen, stack = set(), [root]
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        stack.extend(children.get(p, []))
    return seen


def ticks(pids, sys_only=False):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (0 if sys_only else int(fields[11])) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def main(args):
    children = children_map()
    out = []
    for a in args:
        name, _, pid = a.partition("=")
        n = 0
        if pid.isdigit() and int(pid) > 0:
            n = ticks(tree(int(pid), children), name.endswith("-sys"))
        out.append("%s=%d" % (name, n))
    print(" ".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
