"""Turn ``nvcc -Xptxas -v`` output (stdin) into one line per kernel:
source, arch, kernel, registers, spill stores/loads, shared memory.
Anything that is not ptxas info (an error, a warning) is echoed and makes the
exit status 1."""

from __future__ import annotations

import re
import subprocess
import sys


def demangle(name: str) -> str:
    try:
        out = subprocess.run(["c++filt", name], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return name
    return re.sub(r"\(.*", "", out.replace("kasmina::(anonymous namespace)::", ""))


def main(src: str, arch: str) -> int:
    bad = False
    kernel = None
    for line in sys.stdin:
        line = line.rstrip()
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            kernel = demangle(m.group(1))
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and kernel:
            spills = f"{m.group(1)}/{m.group(2)}"
            continue
        m = re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?(?:,|$)", line)
        if m and kernel:
            smem_m = re.search(r"(\d+) bytes smem", line)
            smem = smem_m.group(1) if smem_m else "0"
            print(f"{src:<14} {arch:<6} regs {m.group(1):>3}  spills {spills:<7} smem {smem:>5}  {kernel}")
            kernel = None
            continue
        if line and not line.startswith("ptxas info") and "bytes stack frame" not in line:
            print(line)
            bad = True
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
