"""Where a decode step's time goes: torch.profiler over a few engine steps of ``serving.py``'s TPOT
batch, summed per kernel (``--measure step_profile``).

The TPOT row says how long a step takes; this row says what ran in it: the device time of every
kernel (or, on a machine without CUDA, every CPU operator) per step, so that two configs' steps can be
compared kernel by kernel -- e.g. how much of a `tq3` step is the decode kernel and how much the small
launches around it (store, query rotation, merge), against FP8's.  vLLM's engine core must run in
the profiled process for that, so the worker starts it in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
which is why ``step_profile`` is measured alone (``serving.validate``).  The profiler's own overhead
lengthens the wall time a step; the device times are the kernels' own.
"""

from __future__ import annotations

import re
import time

TOP_KERNELS = 40  # kernels (or operators) kept in a row, by time per step
NAME_CHARS = 90  # a kernel name is shortened to this many characters in a row


def short_name(name: str) -> str:
    """A kernel's name without its return type, template arguments and parameter list, cut to NAME_CHARS:
    'void flash::fwd<...>(Params)' -> 'flash::fwd'."""
    s = re.sub(r"^void ", "", name.strip())
    depth, out = 0, []
    for ch in s:  # drop <...> (nested) and (...) (nested)
        if ch in "<(":
            depth += 1
        elif ch in ">)" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    s = "".join(out).strip() or name.strip()
    return s if len(s) <= NAME_CHARS else s[: NAME_CHARS - 3] + "..."


def summarize(events, steps: int, device: str, wall_s: float, top: int = TOP_KERNELS) -> dict:
    """The row's fields from profiler averages ``events`` (``prof.key_averages()``: objects with key,
    count and self_device_time_total / self_cpu_time_total in microseconds). device: "cuda" (kernels:
    the events with device time) or "cpu" (operators, by self CPU time)."""
    if steps < 1:
        raise ValueError(f"steps: {steps} must be >= 1")
    per: dict[str, list[float]] = {}
    for e in events:
        us = float(getattr(e, "self_device_time_total", 0.0) or 0.0) if device == "cuda" else \
            float(getattr(e, "self_cpu_time_total", 0.0) or 0.0)
        if us <= 0:
            continue
        acc = per.setdefault(short_name(e.key), [0.0, 0.0])
        acc[0] += e.count
        acc[1] += us
    ranked = sorted(per.items(), key=lambda kv: -kv[1][1])
    total_us = sum(v[1] for _, v in ranked)
    return {"device": device, "profile_steps": steps, "wall_per_step_s": round(wall_s / steps, 6),
            "busy_per_step_s": round(total_us / steps / 1e6, 6),
            "kernels": [{"name": k, "calls_per_step": round(c / steps, 2), "us_per_step": round(us / steps, 1)}
                        for k, (c, us) in ranked[:top]],
            "kernels_total": len(ranked)}


def profile_steps(step, steps: int) -> dict:
    """Run ``step()`` ``steps`` times under torch.profiler (CUDA kernels where CUDA is there, else CPU
    operators) and summarize."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return summarize(prof.key_averages(), steps, "cuda" if cuda else "cpu", wall)


def table(rows: list[dict], label, top: int = 12) -> list[str]:
    """Markdown: per measured step_profile row, its busiest kernels per step."""
    out = []
    for r in rows:
        if r["measurement"] != "step_profile":
            continue
        what = (f"Step profile, {label(r['config'])} (`{r['run_id']}`), {r['batch']} x {r['context']:,} context, "
                f"{r.get('profile_steps', '?')} steps")
        if "error" in r or "skipped" in r:
            out += [f"{what}: " + (("failed: " + r["error"]) if "error" in r else ("skipped: " + r["skipped"]))[:200],
                    ""]
            continue
        unit = "kernels (device time)" if r["device"] == "cuda" else "CPU operators (self time)"
        out += [f"{what}: {1e3 * r['wall_per_step_s']:.2f} ms a step (wall, profiled), "
                f"{1e3 * r['busy_per_step_s']:.2f} ms of {unit} a step, {r['kernels_total']} distinct", "",
                "| kernel | calls / step | us / step | share |", "|---|--:|--:|--:|"]
        busy = 1e6 * r["busy_per_step_s"] or 1.0
        for k in r["kernels"][:top]:
            out.append(f"| `{k['name'].replace('|', '/')}` | {k['calls_per_step']:g} | {k['us_per_step']:,.1f} "
                       f"| {100 * k['us_per_step'] / busy:.1f} % |")
        out.append("")
    return out
