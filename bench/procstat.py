"""Memory and CPU of the server's processes, read from /proc (Linux only).

``Watch`` follows process trees (gunicorn's master and its workers, the rq worker and its
work horses, ...) through one phase of a benchmark, or several: a thread samples every
process's VmRSS five times a second and keeps each one's peak (the kernel's VmHWM, reset
at the start where allowed, is folded in at the end). CPU seconds are utime + stime of a
whole tree, reaped children included (cutime + cstime), taken at the start and at the
end: a work horse that forks and exits within the phase is counted once, in its parent.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes (OSError once it is gone)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values


def open_fds(pid: int) -> int:
    """How many file descriptors ``pid`` has open (sockets, files, pipes...)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of ``pid``: utime + stime, cutime + cstime."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 of proc(5) (state): utime..cstime are fields 14..17.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK


def children(pid: int) -> list[int]:
    kids = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, depth) of every live process below ``pid``, depth 1 for its children."""
    found, todo = [], [(kid, 1) for kid in children(pid)]
    while todo:
        kid, depth = todo.pop()
        found.append((kid, depth))
        todo += [(grandkid, depth + 1) for grandkid in children(kid)]
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and everything below it, living or reaped (0 if gone)."""
    total = 0.0
    for member in [pid, *(kid for kid, _ in descendants(pid))]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += sum(cpu(member))
    return total


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class Root:
    """A process tree to watch: its top process, and what to call it and its children."""

    pid: int
    label: str  # e.g. "gunicorn master"
    child_label: str  # e.g. "gunicorn worker"; grandchildren get " child" appended
    rss: bool = True  # False: CPU only (a context process, such as the S3 server)


@dataclass
class Seen:
    pid: int
    label: str
    root: str
    at_start: bool  # there when the watch first started
    peak_rss: int = 0
    peak_fds: int = 0  # open descriptors, sampled
    first_rss: int = 0
    last_rss: int = 0
    cpu_seconds: float = 0.0  # summed over the segments (own + reaped children)
    cpu_base: float | None = None  # the value at the start of the current segment
    cpu_last: float | None = None


@dataclass
class Watch:
    """Peak RSS per process and CPU per tree of ``roots`` over one phase, or over several
    segments (``start`` ... ``stop``, repeated): CPU is summed over the segments only,
    peaks are the highest seen in any of them."""

    roots: dict[str, Root]
    interval: float = 0.2
    seen: dict[int, Seen] = field(default_factory=dict)
    cpu_by_tree: dict[str, float] = field(default_factory=dict)
    # The highest sum of the RSS of a tree's processes in one sample (not the sum of peaks)
    peak_tree_rss: dict[str, int] = field(default_factory=dict)
    hwm_reset: bool = False
    _tree_base: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        for name, root in self.roots.items():
            self._tree_base[name] = tree_cpu(root.pid)
        self._sample(segment_start=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="procstat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample()
        for member in self.seen.values():
            if member.cpu_base is not None and member.cpu_last is not None:
                member.cpu_seconds += member.cpu_last - member.cpu_base
            member.cpu_base = None
            if member.at_start and not self.hwm_reset:
                continue  # VmHWM would be the peak since the process started
            with contextlib.suppress(OSError):
                member.peak_rss = max(member.peak_rss, status(member.pid).get("VmHWM", 0))
        for name, root in self.roots.items():
            spent = tree_cpu(root.pid) - self._tree_base.pop(name)
            self.cpu_by_tree[name] = self.cpu_by_tree.get(name, 0.0) + spent

    def cpu_seconds(self, names: list[str] | None = None) -> float:
        """CPU seconds used while watched by the trees ``names`` (default: all)."""
        names = list(self.roots) if names is None else names
        return sum(self.cpu_by_tree.get(n, 0.0) for n in names)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _members(self) -> list[tuple[int, str, str]]:
        members = []
        for name, root in self.roots.items():
            members.append((root.pid, root.label, name))
            for kid, depth in descendants(root.pid):
                members.append((kid, root.child_label + " child" * (depth - 1), name))
        return members

    def _sample(self, segment_start: bool = False) -> None:
        first = segment_start and not self.seen
        tree_rss: dict[str, int] = {}
        for pid, label, name in self._members():
            if not self.roots[name].rss and pid != self.roots[name].pid:
                continue
            try:
                rss = status(pid).get("VmRSS")
                own, reaped = cpu(pid)
            except (OSError, IndexError, ValueError):
                continue
            if rss is None:  # a zombie: no memory left to count
                continue
            member = self.seen.get(pid)
            if member is None:
                member = self.seen[pid] = Seen(pid, label, name, at_start=first, first_rss=rss)
            if segment_start:
                member.cpu_base = own + reaped
                with contextlib.suppress(OSError):
                    # "5" resets VmHWM to the current RSS (Linux >= 4.0, ptrace rights).
                    Path(f"/proc/{pid}/clear_refs").write_text("5")
                    self.hwm_reset = True
            elif member.cpu_base is None:
                member.cpu_base = 0.0  # born during this segment
            member.peak_rss = max(member.peak_rss, rss)
            tree_rss[name] = tree_rss.get(name, 0) + rss
            with contextlib.suppress(OSError):
                member.peak_fds = max(member.peak_fds, open_fds(pid))
            member.last_rss = rss
            member.cpu_last = own + reaped
        for name, total in tree_rss.items():
            self.peak_tree_rss[name] = max(self.peak_tree_rss.get(name, 0), total)

    # ------------------------------------------------------------------ reporting

    def _by_phase(self) -> tuple[list[Seen], dict[str, list[Seen]]]:
        """The processes seen (of trees that were sampled), by root and pid: those there
        at the start, and those born during the phase grouped by role."""
        at_start: list[Seen] = []
        born: dict[str, list[Seen]] = {}
        for m in sorted(self.seen.values(), key=lambda m: (m.root, m.pid)):
            if not self.roots[m.root].rss:
                continue
            if m.at_start:
                at_start.append(m)
            else:
                born.setdefault(m.label, []).append(m)
        return at_start, born

    def summary(self) -> dict[str, object]:
        """Processes there at the start one by one; the ones born during the phase (rq
        work horses, a restarted gunicorn worker) by role: how many and the largest peak."""
        at_start, born = self._by_phase()
        processes: list[dict[str, object]] = []
        for m in at_start:
            processes.append(
                {
                    "pid": m.pid,
                    "role": m.label,
                    "peak_rss_mib": round(m.peak_rss / MIB, 1),
                    "start_rss_mib": round(m.first_rss / MIB, 1),
                    "end_rss_mib": round(m.last_rss / MIB, 1),
                    "peak_fds": m.peak_fds,
                    "cpu_s": round(m.cpu_seconds, 2),
                }
            )
        return {
            "processes": processes,
            "born_during_the_phase": {
                label: {
                    "count": len(group),
                    "largest_peak_rss_mib": round(max(m.peak_rss for m in group) / MIB, 1),
                }
                for label, group in born.items()
            },
            "cpu_s_by_tree": {n: round(v, 2) for n, v in self.cpu_by_tree.items()},
            "peak_tree_rss_mib": {
                n: round(v / MIB, 1) for n, v in self.peak_tree_rss.items() if self.roots[n].rss
            },
        }

    def report(self, indent: str = "  ") -> list[str]:
        """One line per process that was there at the start, one per role for processes
        born during the phase (rq work horses: many, short-lived), CPU per tree."""
        at_start, born = self._by_phase()
        lines = []
        for m in at_start:
            lines.append(
                f"{indent}{m.label:24} pid {m.pid:>7}: peak RSS {m.peak_rss / MIB:7.1f} MiB "
                f"(start {m.first_rss / MIB:6.1f}, end {m.last_rss / MIB:6.1f}), "
                f"peak fds {m.peak_fds:5}, CPU {m.cpu_seconds:6.1f} s"
            )
        for label, group in born.items():
            peak = max(m.peak_rss for m in group)
            lines.append(
                f"{indent}{label:24} {len(group):>3} born during the run: "
                f"largest peak RSS {peak / MIB:7.1f} MiB (sampled)"
            )
        cpu_parts = ", ".join(f"{n} {v:.1f} s" for n, v in self.cpu_by_tree.items())
        lines.append(f"{indent}CPU seconds by process tree (children included): {cpu_parts}")
        rss_parts = ", ".join(
            f"{n} {v / MIB:.0f} MiB" for n, v in self.peak_tree_rss.items() if self.roots[n].rss
        )
        lines.append(f"{indent}peak total RSS by process tree (one sample's sum): {rss_parts}")
        return lines
