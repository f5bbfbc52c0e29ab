#!/usr/bin/env python3
"""The orchestrating half of scripts/gpu-acceptance.sh (run that, not this).

Runs each acceptance case with and without libvgpu.so, every GPU process in a process group of its own with
a timeout, judges the measurements against what the case expects, prints one table (case, check, expected,
measured, result) and writes everything as JSON. Exit status: 0 when no check failed (skips allowed), 1 when
one did, 2 when it could not start (bad arguments, no GPU, no library).

Standard library only: the measuring happens in cases.py (PyTorch, CuPy, ctypes), driver_probe.c (cc) and
alloc_apis.cu (nvcc), each in a process of its own.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CASES_PY = os.path.join(HERE, "cases.py")
MiB = 1 << 20
GiB = 1 << 30

# The bound is 8 minutes on one GPU; keep a margin for start-up and the report.
DEFAULT_BUDGET_S = 450
# The default limit, and the smallest GPU it is used on (below that, a proportional limit).
DEFAULT_LIMIT = 4 * GiB
FULL_LIMIT_MIN_GPU = 6 * GiB
# The simulated machine of --sim: one A100-like GPU.
DEFAULT_SIM_DEVICES = "name=NVIDIA A100-SXM4-40GB"
# Variables that must not leak from the operator's shell into a measured process.
SCRUBBED_PREFIXES = ("CUDA_DEVICE_",)
SCRUBBED = {"LD_PRELOAD", "CUDA_VISIBLE_DEVICES", "CUDA_TASK_PRIORITY", "GPU_CORE_UTILIZATION_POLICY",
            "CUDA_OVERSUBSCRIBE", "PYTORCH_CUDA_ALLOC_CONF", "CUDA_LAUNCH_BLOCKING", "CUDA_MPS_PIPE_DIRECTORY"}

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


class Interrupted(Exception):
    pass


class StepTimeout(Exception):
    pass


def human(nbytes):
    if nbytes is None:
        return "?"
    sign = "-" if nbytes < 0 else ""
    n = abs(nbytes)
    if n >= GiB:
        return "%s%.2f GiB" % (sign, n / GiB)
    if n >= MiB:
        return "%s%.0f MiB" % (sign, n / MiB)
    return "%s%d B" % (sign, n)


def round_down(n, unit):
    return n // unit * unit


class Check:
    """One row of the table."""

    def __init__(self, cid, title, expected, measured="", status=FAIL, reason="", data=None):
        self.cid, self.title, self.expected, self.measured = cid, title, expected, measured
        self.status, self.reason, self.data = status, reason, data or {}

    def to_json(self):
        return {"id": self.cid, "check": self.title, "expected": self.expected, "measured": self.measured,
                "status": self.status, "reason": self.reason, "data": self.data}


class Case:
    def __init__(self, number, title):
        self.number, self.title = number, title
        self.checks, self.steps = [], []
        self.duration_s = 0.0

    def add(self, *args, **kw):
        c = Check(*args, **kw)
        self.checks.append(c)
        return c

    def to_json(self):
        return {"case": self.number, "title": self.title, "duration_s": round(self.duration_s, 2),
                "checks": [c.to_json() for c in self.checks], "steps": self.steps}


class Ctx:
    """Everything the cases share: arguments, the machine, the environment builders, the process groups."""

    def __init__(self, args):
        self.args = args
        self.sim = args.sim
        self.work = os.path.abspath(args.work)
        self.started = time.monotonic()
        self.deadline = self.started + args.budget_s
        self.python = args.python or sys.executable
        self.live = {}  # pid -> Popen, every process group we started and have not reaped
        self.all_pids = []
        self.lock = threading.Lock()
        self.pgid_file = os.path.join(self.work, "pgids")
        self.gpu = {}
        self.tools = {}
        self.limit = DEFAULT_LIMIT
        self.limit_note = ""
        self.lib = os.path.abspath(args.lib)

    # ---- time ------------------------------------------------------------------------------------------
    def remaining(self):
        return self.deadline - time.monotonic()

    def clamp(self, timeout):
        """A step's timeout, shortened so the whole run stays inside its budget."""
        return max(1.0, min(float(timeout), self.remaining() - 5.0))

    # ---- process groups (the shell's trap kills whatever is listed in pgids on exit) --------------------
    def _write_pgids(self):
        tmp = self.pgid_file + ".tmp"
        with open(tmp, "w") as f:
            for pid in sorted(self.live):
                f.write("%d\n" % pid)
        os.replace(tmp, self.pgid_file)

    def spawn(self, argv, env, cwd=None, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
        p = subprocess.Popen(argv, env=env, cwd=cwd or self.work, stdin=stdin, stdout=stdout, stderr=stderr,
                             start_new_session=True, universal_newlines=True)
        with self.lock:
            self.live[p.pid] = p
            self.all_pids.append(p.pid)
            self._write_pgids()
        return p

    def reap(self, p, kill=False):
        if kill and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # Whatever the group left behind (a grandchild) goes too.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        with self.lock:
            self.live.pop(p.pid, None)
            self._write_pgids()

    def kill_all(self):
        for p in list(self.live.values()):
            self.reap(p, kill=True)

    # ---- environments -----------------------------------------------------------------------------------
    def base_env(self):
        env = {k: v for k, v in os.environ.items()
               if k not in SCRUBBED and not k.startswith(SCRUBBED_PREFIXES)}
        env["PYTHONUNBUFFERED"] = "1"
        if self.sim:
            sim = os.path.join(ROOT, "target", "sim")
            old = env.get("LD_LIBRARY_PATH", "")
            env["LD_LIBRARY_PATH"] = sim + (":" + old if old else "")
            env["SIMGPU_STATE"] = os.path.join(self.work, "sim", "machine.state")
            env["SIMGPU_DEVICES"] = self.args.sim_devices
        elif self.gpu.get("uuid"):
            # One GPU, named by UUID: CUDA ordinal 0 in every measured process, whatever the enumeration order.
            env["CUDA_VISIBLE_DEVICES"] = self.gpu["uuid"]
        return env

    def env(self, lib=False, region=None, mem_limit=None, sm_limit=None, extra=None):
        """The environment of one measured process, and the variables this run set in it (for the JSON)."""
        env = self.base_env()
        set_vars = {}
        if lib:
            set_vars["LD_PRELOAD"] = self.lib
            if region is None:
                raise ValueError("a preloaded process needs its own region file")
            os.makedirs(os.path.dirname(region), exist_ok=True)
            set_vars["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = region
            if mem_limit is not None:
                set_vars["CUDA_DEVICE_MEMORY_LIMIT"] = str(mem_limit)
            if sm_limit is not None:
                set_vars["CUDA_DEVICE_SM_LIMIT"] = str(sm_limit)
        set_vars.update(extra or {})
        env.update(set_vars)
        return env, set_vars


def tail(text, n=3000):
    text = text or ""
    return text[-n:]


def parse_result(stdout):
    for line in reversed((stdout or "").splitlines()):
        if line.startswith("RESULT "):
            try:
                return json.loads(line[len("RESULT "):])
            except ValueError as e:
                return {"fatal": "unparseable RESULT line: %s" % e}
    return None


def run_step(ctx, case, name, argv, env_pair, timeout, cwd=None):
    """Run one process to completion (or kill its group at the timeout); record it in the case."""
    env, set_vars = env_pair
    timeout = ctx.clamp(timeout)
    t0 = time.monotonic()
    step = {"name": name, "argv": argv, "env_set": set_vars, "timeout_s": round(timeout, 1)}
    try:
        p = ctx.spawn(argv, env, cwd=cwd)
    except OSError as e:
        step.update(rc=None, error="cannot start: %s" % e, result=None, timed_out=False, duration_s=0.0)
        case.steps.append(step)
        return step
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        ctx.reap(p, kill=True)
        out, err = p.communicate()
    finally:
        ctx.reap(p)
    step.update(rc=p.returncode, timed_out=timed_out, duration_s=round(time.monotonic() - t0, 2),
                result=parse_result(out), stdout_tail=tail(out), stderr_tail=tail(err))
    case.steps.append(step)
    return step


def step_problem(step):
    """Why a step produced no usable result, or None."""
    if step.get("error"):
        return step["error"]
    if step.get("timed_out"):
        return "timed out after %s s" % step["timeout_s"]
    res = step.get("result")
    if res is None:
        last = (step.get("stderr_tail") or "").strip().splitlines()[-1:] or ["no output"]
        return "exit status %s, no result (%s)" % (step.get("rc"), last[0][:200])
    if res.get("fatal"):
        return res["fatal"]
    return None


class Worker:
    """A long-lived `cases.py worker` process: one JSON answer per command line."""

    def __init__(self, ctx, case, name, env_pair, timeout=60):
        self.ctx, self.name = ctx, name
        env, set_vars = env_pair
        self.err_path = os.path.join(ctx.work, "worker-%s-%d.stderr" % (name, len(ctx.all_pids)))
        self.err_file = open(self.err_path, "w")
        self.p = ctx.spawn([ctx.python, CASES_PY, "worker"], env, stdin=subprocess.PIPE, stderr=self.err_file)
        self.q = queue.Queue()
        self.log = []
        threading.Thread(target=self._pump, daemon=True).start()
        case.steps.append({"name": "worker " + name, "pid": self.p.pid, "env_set": set_vars, "log": self.log})
        self.ready = self.read(timeout)
        if self.ready.get("event") != "ready":
            raise RuntimeError("worker %s did not start: %s" % (name, self.ready))

    def _pump(self):
        for line in self.p.stdout:
            self.q.put(line)
        self.q.put(None)

    def send(self, line):
        self.log.append({"send": line})
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def read(self, timeout=60):
        try:
            line = self.q.get(timeout=self.ctx.clamp(timeout))
        except queue.Empty:
            raise StepTimeout("worker %s gave no answer within %.0f s" % (self.name, timeout))
        if line is None:
            raise RuntimeError("worker %s exited (status %s): %s" % (self.name, self.p.poll(), self.stderr_tail()))
        obj = json.loads(line)
        self.log.append({"got": obj})
        return obj

    def request(self, line, timeout=60):
        self.send(line)
        return self.read(timeout)

    def stderr_tail(self):
        try:
            with open(self.err_path) as f:
                return tail(f.read(), 500)
        except OSError:
            return ""

    def kill(self):
        self.ctx.reap(self.p, kill=True)

    def close(self):
        if self.p.poll() is None:
            try:
                self.request("quit", timeout=10)
            except Exception:  # noqa: BLE001  (a worker that cannot quit is killed below)
                pass
        self.ctx.reap(self.p, kill=True)
        self.err_file.close()


# ------------------------------------------------------------------------------------------------------------
# Preflight: the library, the GPU, the tools.


def lib_info(path):
    info = {"path": path}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, "cannot read %s: %s" % (path, e)
    if data[:4] != b"\x7fELF":
        return None, "%s is not an ELF shared library" % path
    info["sha256"] = hashlib.sha256(data).hexdigest()
    info["bytes"] = len(data)
    info["mtime"] = datetime.datetime.fromtimestamp(os.path.getmtime(path)).isoformat(timespec="seconds")
    return info, None


def smi_query(ctx, fields, env=None, extra=()):
    """nvidia-smi --query-gpu for our device; a dict of the fields, or raises."""
    smi = ctx.tools.get("nvidia_smi")
    argv = [smi, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits", "-i", str(ctx.args.device)]
    argv += list(extra)
    out = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                         timeout=ctx.clamp(30))
    if out.returncode != 0:
        raise RuntimeError("nvidia-smi failed (%d): %s" % (out.returncode, (out.stderr or out.stdout).strip()[:300]))
    values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(fields, values))


def nvml_query(ctx, case, env_pair, name="nvml-info"):
    """NVML's memory view through cases.py (where there is no nvidia-smi, as on the simulated driver)."""
    if case is None:
        case = Case(0, "preflight")
    step = run_step(ctx, case, name, [ctx.python, CASES_PY, "nvml-info", str(ctx.args.device)], env_pair, 30)
    problem = step_problem(step)
    if problem:
        raise RuntimeError(problem)
    res = step["result"]
    if res.get("error"):
        raise RuntimeError(res["error"])
    return res


def find_tool(names, extra_dirs=()):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    for d in extra_dirs:
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
    return None


def probe_python_module(ctx, code, env_pair, timeout=90):
    env, _ = env_pair
    try:
        out = subprocess.run([ctx.python, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=ctx.clamp(timeout))
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": "timed out"}
    except OSError as e:
        return {"ok": False, "reason": str(e)}
    res = parse_result(out.stdout)
    if res is None:
        lines = (out.stderr or "").strip().splitlines()
        return {"ok": False, "reason": (lines[-1] if lines else "exit status %d" % out.returncode)[:300]}
    return res


TORCH_PROBE = """
import json
try:
    import torch
except Exception as e:
    print("RESULT " + json.dumps({"ok": False, "reason": "import torch: %s: %s" % (type(e).__name__, e)}))
    raise SystemExit(0)
ok = torch.cuda.is_available()
print("RESULT " + json.dumps({"ok": ok, "version": torch.__version__, "cuda": torch.version.cuda,
      "reason": None if ok else "torch %s: torch.cuda.is_available() is False" % torch.__version__}))
"""

CUPY_PROBE = """
import json
try:
    import cupy
    from cupy.cuda import runtime
    print("RESULT " + json.dumps({"ok": hasattr(runtime, "mallocAsync"), "version": cupy.__version__,
          "reason": None if hasattr(runtime, "mallocAsync") else "CuPy too old: no runtime.mallocAsync"}))
except Exception as e:
    print("RESULT " + json.dumps({"ok": False, "reason": "import cupy: %s: %s" % (type(e).__name__, e)}))
"""


def preflight(ctx, report):
    """Fills ctx.gpu, ctx.tools, ctx.limit; returns an error string when nothing can run."""
    args = ctx.args
    info, err = lib_info(ctx.lib)
    if err:
        return err
    report["lib"] = info
    pre = Case(0, "preflight")
    report["_preflight_case"] = pre
    cuda_dirs = [os.path.join(d, "bin") for d in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"))
                 if d] + ["/usr/local/cuda/bin"]
    ctx.tools["cc"] = find_tool(["cc", "gcc", "clang"])
    ctx.tools["nvcc"] = args.nvcc or find_tool(["nvcc"], cuda_dirs)
    ctx.tools["nvidia_smi"] = None if ctx.sim else find_tool(["nvidia-smi"])
    ctx.tools["python"] = ctx.python
    ctx.tools["python_version"] = subprocess.run(
        [ctx.python, "-c", "import sys; print(sys.version.split()[0])"], stdout=subprocess.PIPE,
        universal_newlines=True).stdout.strip()

    if ctx.sim:
        sim = os.path.join(ROOT, "target", "sim")
        for name in ("libcuda.so.1", "libnvidia-ml.so.1"):
            if not os.path.exists(os.path.join(sim, name)):
                return "--sim needs %s: run scripts/build-artifacts.sh" % os.path.join(sim, name)
        os.makedirs(os.path.join(ctx.work, "sim"), exist_ok=True)
        if args.device != 0:
            return "--sim has one simulated GPU: use --device 0"

    # The GPU, as the driver sees it without the library.
    fields = ["index", "uuid", "name", "memory.total", "memory.used", "memory.free", "driver_version",
              "compute_mode", "persistence_mode"]
    try:
        if ctx.tools["nvidia_smi"]:
            q = smi_query(ctx, fields, env=ctx.base_env())
            ctx.gpu = {"index": int(q["index"]), "uuid": q["uuid"], "name": q["name"],
                       "total": int(q["memory.total"]) * MiB, "used": int(q["memory.used"]) * MiB,
                       "free": int(q["memory.free"]) * MiB, "driver_version": q["driver_version"],
                       "compute_mode": q["compute_mode"], "persistence_mode": q["persistence_mode"],
                       "source": "nvidia-smi"}
        else:
            q = nvml_query(ctx, pre, ctx.env(), "preflight nvml-info")
            ctx.gpu = {"index": args.device, "uuid": q["uuid"], "name": q["name"], "total": q["total"],
                       "used": q["used"], "free": q["free"], "driver_version": q["driver_version"],
                       "source": "NVML (no nvidia-smi)"}
    except Exception as e:  # noqa: BLE001
        return "cannot query GPU %d (%s): %s" % (args.device, "simulated" if ctx.sim else "is the driver installed?", e)

    total = ctx.gpu["total"]
    if total >= FULL_LIMIT_MIN_GPU:
        ctx.limit = DEFAULT_LIMIT
        ctx.limit_note = "4 GiB (CUDA_DEVICE_MEMORY_LIMIT=4g)"
    else:
        ctx.limit = max(256 * MiB, round_down(total * 2 // 3, 256 * MiB))
        ctx.limit_note = ("%s: the GPU has %s, less than 6 GiB, so the limit is two thirds of it instead of 4 GiB"
                          % (human(ctx.limit), human(total)))
    ctx.limit_env = "4g" if ctx.limit == DEFAULT_LIMIT else "%dm" % (ctx.limit // MiB)
    if ctx.gpu["free"] < ctx.limit + GiB:
        ctx.limit_note += ("; WARNING: only %s of the GPU is free (other processes?), the runs without the library "
                           "need the limit + 1 GiB" % human(ctx.gpu["free"]))

    if ctx.sim:
        reason = "--sim: PyTorch and CuPy need a real GPU"
        ctx.tools["torch"] = {"ok": False, "reason": reason, "sim": True}
        ctx.tools["cupy"] = {"ok": False, "reason": reason, "sim": True}
    else:
        ctx.tools["torch"] = probe_python_module(ctx, TORCH_PROBE, ctx.env())
        ctx.tools["cupy"] = probe_python_module(ctx, CUPY_PROBE, ctx.env())

    # The driver probe (cases 5 on --sim, and 6), built with the system C compiler.
    ctx.tools["driver_probe"] = None
    if ctx.tools["cc"]:
        exe = os.path.join(ctx.work, "bin", "driver_probe")
        os.makedirs(os.path.dirname(exe), exist_ok=True)
        out = subprocess.run([ctx.tools["cc"], "-O2", "-std=gnu11", "-o", exe, os.path.join(HERE, "driver_probe.c"),
                              "-ldl"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                             timeout=ctx.clamp(120))
        if out.returncode == 0:
            ctx.tools["driver_probe"] = exe
        else:
            ctx.tools["driver_probe_error"] = tail(out.stdout, 1000)
    return None


# ------------------------------------------------------------------------------------------------------------
# The cases. Each adds rows to its Case; an exception inside one becomes a FAIL row and the run goes on.


def case_dir(ctx, number):
    d = os.path.join(ctx.work, "case%d" % number)
    os.makedirs(d, exist_ok=True)
    return d


def torch_missing(ctx, case, cid, title, expected):
    t = ctx.tools["torch"]
    status = SKIP if t.get("sim") else FAIL
    case.add(cid, title, expected, "not run", status, "PyTorch is needed: %s" % t.get("reason"))


def case1(ctx, case):
    L, chunk = ctx.limit, max(2 * MiB, round_down(ctx.limit // 16, 2 * MiB))
    exp_total = "total = %s (%d B)" % (human(L), L)
    if not ctx.tools["torch"].get("ok"):
        torch_missing(ctx, case, "1", "PyTorch memory limit", exp_total)
        return
    d = case_dir(ctx, 1)
    argv = [ctx.python, CASES_PY, "torch-mem", "--limit", str(L), "--chunk", str(chunk)]

    base = run_step(ctx, case, "baseline (no library)", argv + ["--mode", "baseline"], ctx.env(), 120)
    problem = step_problem(base)
    want_bytes = (L // chunk + 1) * chunk
    exp = "total ~ GPU (%s); %s of tensors fit" % (human(ctx.gpu["total"]), human(want_bytes))
    if problem:
        case.add("1.0", "without library: GPU itself", exp, "-", FAIL, problem)
    else:
        r = base["result"]
        # CUDA's total is a little below nvidia-smi's (memory the driver keeps for itself).
        total_ok = 0.85 * ctx.gpu["total"] <= r["total0"] <= ctx.gpu["total"] + 2 * MiB
        fits = r["ok"] == r["want"]
        c = case.add("1.0", "without library: GPU itself", exp,
                     "total %s; %d/%d chunks of %s" % (human(r["total0"]), r["ok"], r["want"], human(chunk)),
                     PASS if total_ok and fits else FAIL, data=r)
        if not fits:
            c.reason = ("the GPU itself could not hold the limit + one chunk (%s free at start): the out-of-memory "
                        "checks below cannot tell the library's limit from the GPU's" % human(r["free0"]))
        elif not total_ok:
            c.reason = "torch total %s != nvidia-smi total %s" % (human(r["total0"]), human(ctx.gpu["total"]))

    def limited_rows(prefix, label, extra):
        region = os.path.join(d, prefix, "vgpu.cache")
        step = run_step(ctx, case, "with library, " + label, argv + ["--mode", "limited"],
                        ctx.env(lib=True, region=region, mem_limit=ctx.limit_env, extra=extra), 120)
        problem = step_problem(step)
        if problem:
            case.add(prefix + ".1", "%s: mem_get_info" % label, exp_total, "-", FAIL, problem)
            return None
        return step["result"]

    r = limited_rows("1", "limited", {})
    if r is None:
        return
    case.add("1.1", "mem_get_info() total under the limit", exp_total, "total %s (%d B), free %s" % (
        human(r["total0"]), r["total0"], human(r["free0"])), PASS if r["total0"] == L else FAIL,
        "" if r["total0"] == L else "total is not the limit", data={"total0": r["total0"], "free0": r["free0"]})

    context = L - r["free0"]
    fill_ok = r["fit"] >= 1 and r["ok"] == r["fit"] and r.get("fill_values") == [3, 3]
    c = case.add("1.2", "tensors up to the limit succeed",
                 "all %d x %s (= free %s) succeed" % (r["fit"], human(chunk), human(r["free0"])),
                 "%d/%d ok, %s in tensors; %s charged before (context)" % (
                     r["ok"], r["fit"], human(r["ok"] * chunk), human(context)),
                 PASS if fill_ok else FAIL, data={k: r.get(k) for k in ("fit", "ok", "fill_error", "fill_values",
                                                                     "free_full")})
    if not fill_ok:
        c.reason = r.get("fill_error") or r.get("fill_values_error") or "fewer chunks than the reported free memory"

    om, ol = r.get("one_more", {}), r.get("over_limit", {})
    oom_ok = bool(om.get("raised") and om.get("oom") and ol.get("raised") and ol.get("oom"))
    c = case.add("1.3", "one more tensor raises out-of-memory", "OutOfMemoryError (one more chunk; > limit at once)",
                 "%s; %s" % (om.get("oom") or ("no error" if not om.get("raised") else om.get("type")),
                             ol.get("oom") or ("no error" if not ol.get("raised") else ol.get("type"))),
                 PASS if oom_ok else FAIL, data={"one_more": om, "over_limit": ol})
    if not oom_ok:
        c.reason = "one more: %s / over the limit: %s" % (om, ol)

    a = r.get("after_oom", {})
    back = a.get("free_after_empty_cache")
    rec_ok = (not a.get("error") and a.get("reused") == a.get("reuse_wanted") and a.get("sum_ok")
              and a.get("big_after_ok") and back is not None and back >= r["free0"] - 64 * MiB)
    c = case.add("1.4", "caching allocator works after the OOM",
                 "reuse, compute, empty_cache gives back ~%s, big alloc" % human(r["free0"]),
                 "reused %s/%s, sum %s, free after empty_cache %s, %s tensor %s" % (
                     a.get("reused"), a.get("reuse_wanted"), "ok" if a.get("sum_ok") else "WRONG", human(back),
                     human(a.get("big_after")), "ok" if a.get("big_after_ok") else "failed"),
                 PASS if rec_ok else FAIL, data=a)
    if not rec_ok:
        c.reason = a.get("error") or a.get("reuse_error") or "see data"

    # The same through PyTorch's expandable segments: its allocator then maps memory with the VMM API.
    r2 = limited_rows("1.5", "expandable_segments", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})
    if r2 is not None:
        om2 = r2.get("one_more", {})
        a2 = r2.get("after_oom", {})
        ok2 = (r2["total0"] == L and r2["ok"] == r2["fit"] and r2["fit"] >= 1 and bool(om2.get("oom"))
               and not a2.get("error") and a2.get("big_after_ok"))
        c = case.add("1.5", "same with expandable_segments (VMM)", "total = limit, fill, OOM, recover",
                     "total %s, %d/%d chunks, one more: %s, recovery %s" % (
                         human(r2["total0"]), r2["ok"], r2["fit"], om2.get("oom") or "no OOM",
                         "ok" if a2.get("big_after_ok") and not a2.get("error") else "failed"),
                     PASS if ok2 else FAIL, data=r2)
        if not ok2:
            c.reason = a2.get("error") or r2.get("fill_error") or "see data"


def smi_memory(ctx, case, env_pair, name):
    """(total, used, free) in MiB as nvidia-smi prints them (or NVML, where there is no nvidia-smi)."""
    env, set_vars = env_pair
    if ctx.tools["nvidia_smi"]:
        t0 = time.monotonic()
        q = smi_query(ctx, ["memory.total", "memory.used", "memory.free"], env=env)
        case.steps.append({"name": name, "argv": "nvidia-smi --query-gpu=memory.total,memory.used,memory.free",
                           "env_set": set_vars, "result": q, "duration_s": round(time.monotonic() - t0, 2)})
        return int(q["memory.total"]), int(q["memory.used"]), int(q["memory.free"])
    q = nvml_query(ctx, case, env_pair, name)
    return q["total"] // MiB, q["used"] // MiB, q["free"] // MiB


def case2(ctx, case):
    L_mib = ctx.limit // MiB
    d = case_dir(ctx, 2)
    region = os.path.join(d, "vgpu.cache")
    via = "nvidia-smi" if ctx.tools["nvidia_smi"] else "NVML (no nvidia-smi%s)" % (" in --sim" if ctx.sim else "")
    phys_mib = ctx.gpu["total"] // MiB
    try:
        t, u, f = smi_memory(ctx, case, ctx.env(), "without library")
        case.add("2.0", "without library: %s total" % via, "%d MiB (the GPU)" % phys_mib, "%d MiB" % t,
                 PASS if abs(t - phys_mib) <= 1 else FAIL)
    except Exception as e:  # noqa: BLE001
        case.add("2.0", "without library: %s total" % via, "%d MiB" % phys_mib, "-", FAIL, str(e))

    lim = ctx.env(lib=True, region=region, mem_limit=ctx.limit_env)
    try:
        t, u, f = smi_memory(ctx, case, lim, "with library")
        case.add("2.1", "%s total inside the limited env" % via, "%d MiB (the limit)" % L_mib,
                 "total %d MiB, used %d MiB" % (t, u), PASS if t == L_mib else FAIL,
                 "" if t == L_mib else "total is not the limit")
    except Exception as e:  # noqa: BLE001
        case.add("2.1", "%s total inside the limited env" % via, "%d MiB" % L_mib, "-", FAIL, str(e))

    # With a process of the same container holding memory, nvidia-smi's "used" is the container's usage.
    hold = round_down(ctx.limit // 4, 2 * MiB)
    w = None
    try:
        w = Worker(ctx, case, "holder", lim)
        got = w.request("alloc %d 1" % hold)
        if got.get("ok") != 1:
            raise RuntimeError("holder could not allocate %s: %s" % (human(hold), got))
        t, u, f = smi_memory(ctx, case, lim, "with library, holder alive")
        # free <= total - used: the v2 answer also takes the driver's reserved memory off free.
        ok = t == L_mib and hold // MiB <= u <= L_mib and 0 <= f <= t - u + 1
        case.add("2.2", "%s used = the container's usage" % via, "total %d, used %d..%d MiB, free <= total - used" % (
            L_mib, hold // MiB, L_mib), "total %d, used %d, free %d MiB" % (t, u, f), PASS if ok else FAIL,
            "" if ok else "numbers do not add up to the limit and the holder's usage")
    except Exception as e:  # noqa: BLE001
        case.add("2.2", "%s used = the container's usage" % via, "used >= %d MiB" % (hold // MiB), "-", FAIL, str(e))
    finally:
        if w:
            w.close()

    if ctx.tools["nvidia_smi"]:
        env, set_vars = lim
        out = subprocess.run([ctx.tools["nvidia_smi"], "-i", str(ctx.args.device)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, universal_newlines=True, timeout=ctx.clamp(30))
        case.steps.append({"name": "plain nvidia-smi", "env_set": set_vars, "rc": out.returncode,
                           "stdout_tail": tail(out.stdout)})
        found = re.search(r"/\s*%dMiB" % L_mib, out.stdout) is not None
        case.add("2.3", "plain `nvidia-smi` table", "shows '/ %dMiB'" % L_mib, "found" if found else "not found",
                 PASS if found and out.returncode == 0 else FAIL,
                 "" if found else "the memory column does not show the limit")
    else:
        case.add("2.3", "plain `nvidia-smi` table", "shows '/ %dMiB'" % L_mib, "not run", SKIP,
                 "no nvidia-smi on PATH" + (" (--sim)" if ctx.sim else ""))


def case3(ctx, case):
    L = ctx.limit
    chunk = round_down(L // 16, 2 * MiB)
    small = round_down(L // 64, 2 * MiB)
    d = case_dir(ctx, 3)
    workers = []
    try:
        # Without the library the GPU lets the two go past the limit: the limit below is the library's.
        a = Worker(ctx, case, "A (no library)", ctx.env())
        workers.append(a)
        b = Worker(ctx, case, "B (no library)", ctx.env())
        workers.append(b)
        ra = a.request("alloc %d 8" % chunk)
        rb = b.request("alloc %d 9" % chunk)
        ok = ra["ok"] == 8 and rb["ok"] == 9
        case.add("3.0", "without library: two processes", "8 + 9 chunks of %s (> limit) succeed" % human(chunk),
                 "%d + %d" % (ra["ok"], rb["ok"]), PASS if ok else FAIL,
                 "" if ok else "the GPU itself has no room for the limit + 1 chunk (busy?)")
        for w in workers:
            w.close()
        workers = []

        lim = ctx.env(lib=True, region=os.path.join(d, "vgpu.cache"), mem_limit=ctx.limit_env)
        a = Worker(ctx, case, "A", lim)
        workers.append(a)
        b = Worker(ctx, case, "B", lim)
        workers.append(b)
        ra = a.request("alloc %d 8" % chunk)
        ib = b.request("info")
        seen = ib["total"] - ib["free"]
        ok = ra["ok"] == 8 and ib["total"] == L and seen >= 8 * chunk
        case.add("3.1", "one region: B sees A's usage", "B: total %s, used >= %s" % (human(L), human(8 * chunk)),
                 "A holds %d chunks; B: total %s, used %s" % (ra["ok"], human(ib["total"]), human(seen)),
                 PASS if ok else FAIL, "" if ok else "B does not see A's allocations (or A could not allocate)")

        # Both race for what is left, in small blocks, at the same moment.
        free_before = ib["free"]
        a.send("alloc %d 64" % small)
        b.send("alloc %d 64" % small)
        ra2, rb2 = a.read(), b.read()
        ia, ib2 = a.request("info"), b.request("info")
        got = (ra2["ok"] + rb2["ok"]) * small
        used_a = ia["total"] - ia["free"]
        both_oom = ra2["rc"] == 2 and rb2["rc"] == 2
        ok = both_oom and got <= free_before and got >= free_before - 2 * small and used_a <= L
        case.add("3.2", "racing to the limit: sum stays under it",
                 "A+B get <= %s (what was free), both then OOM (2)" % human(free_before),
                 "A %d + B %d blocks = %s; rc %d/%d; used %s of %s" % (
                     ra2["ok"], rb2["ok"], human(got), ra2["rc"], rb2["rc"], human(used_a), human(L)),
                 PASS if ok else FAIL,
                 "" if ok else ("went past the limit" if got > free_before else
                                "stopped early or without CUDA_ERROR_OUT_OF_MEMORY"),
                 data={"free_before": free_before, "got": got, "a": ra2, "b": rb2})

        # Killing A frees its share for B.
        a_share = 8 * chunk + ra2["ok"] * small
        free_b = ib2["free"]
        a.kill()
        t0 = time.monotonic()
        freed = 0
        while time.monotonic() - t0 < 15:
            now = b.request("info")
            freed = now["free"] - free_b
            if freed >= a_share:
                break
            time.sleep(0.2)
        waited = time.monotonic() - t0
        seen_ok = freed >= a_share
        seen = case.add("3.3", "SIGKILL A: B's free shows its share back",
                        "B's free grows by >= %s within 15 s" % human(a_share),
                        "+%s after %.1f s" % (human(freed), waited), PASS if seen_ok else FAIL,
                        "" if seen_ok else "cuMemGetInfo (and so nvidia-smi) still counts the dead process")
        rb3 = b.request("alloc %d 64" % chunk)
        want = a_share // chunk
        ok = rb3["ok"] >= want
        case.add("3.4", "B can allocate A's share", ">= %d more chunks of %s" % (want, human(chunk)),
                 "%d more (then rc %d)" % (rb3["ok"], rb3["rc"]), PASS if ok else FAIL,
                 "" if ok else "B cannot allocate what A gave back")
        if ok and not seen_ok:
            seen.reason += ("; the share does come back once an allocation needs it (3.4): the dead process is "
                            "reclaimed on a refused allocation, not when usage is read")
    finally:
        for w in workers:
            w.close()


def case4(ctx, case):
    L = ctx.limit
    size = round_down(L // 8, 2 * MiB)
    d = case_dir(ctx, 4)
    if ctx.tools["cupy"].get("ok"):
        backend = "cupy"
        argv = [ctx.python, CASES_PY, "alloc-apis", "--backend", "cupy", "--size", str(size)]
        names = {"sync": "cudaMalloc", "async": "cudaMallocAsync"}
    elif ctx.tools["nvcc"]:
        backend = "nvcc"
        exe = os.path.join(ctx.work, "bin", "alloc_apis")
        step = run_step(ctx, case, "nvcc alloc_apis.cu", [ctx.tools["nvcc"], "-O2", "-o", exe,
                                                           os.path.join(HERE, "alloc_apis.cu"), "-ldl"],
                        ctx.env(), 180)
        if step["rc"] != 0 or step.get("timed_out"):
            case.add("4", "allocation APIs counted", "all counted", "not run", FAIL,
                     "nvcc failed: %s" % (step.get("stderr_tail") or step.get("stdout_tail") or "")[-300:])
            return
        argv = [exe, str(size)]
        names = {"sync": "cudaMalloc", "async": "cudaMallocAsync"}
    else:
        backend = "driver"
        argv = [ctx.python, CASES_PY, "alloc-apis", "--backend", "driver", "--size", str(size)]
        names = {"sync": "cuMemAlloc_v2", "async": "cuMemAllocAsync"}
        case.add("4.0", "runtime API (cudaMalloc, cudaMallocAsync)", "counted", "not run", SKIP,
                 "no CuPy (%s) and no nvcc: the driver API is tested instead, through ctypes" %
                 ctx.tools["cupy"].get("reason"))
    names["vmm"] = "cuMemCreate+cuMemMap (VMM)"

    base = run_step(ctx, case, "baseline (no library)", argv, ctx.env(), 120)
    lim = run_step(ctx, case, "with library", argv + ["--limited"],
                   ctx.env(lib=True, region=os.path.join(d, "vgpu.cache"), mem_limit=ctx.limit_env), 120)
    problem = step_problem(lim)
    if problem:
        case.add("4.1", "allocation APIs counted (%s)" % backend, "all counted", "-", FAIL, problem)
        return
    r = lim["result"]
    rb = (base.get("result") or {}).get("apis", {}) if not step_problem(base) else {}
    total_ok = r.get("total") == L
    for i, door in enumerate(("sync", "async", "vmm"), start=1):
        rec = r["apis"].get(door, {})
        dsize = rec.get("size", size)
        slack = 32 * MiB if door == "async" else 2 * MiB  # a pool may reserve in larger steps
        residue = max(0, (rb.get(door) or {}).get("delta_after_free", 0) or 0)
        title = "%s counted" % names[door]
        expected = "usage +%s; > free -> OOM (2); freed -> back" % human(dsize)
        if rec.get("error") or rec.get("rc"):
            case.add("4.%d" % i, title, expected, "-", FAIL, rec.get("error") or "rc %s" % rec.get("rc"), data=rec)
            continue
        delta, after, over_rc = rec.get("delta_alloc"), rec.get("delta_after_free"), rec.get("over_rc")
        reasons = []
        if not (dsize <= delta <= dsize + slack):
            reasons.append("usage grew by %s, not %s" % (human(delta), human(dsize)))
        if over_rc != 2:
            reasons.append("over-limit allocation returned %s, not 2" % over_rc)
        if after is None or after > residue + slack:
            reasons.append("%s still counted after free (without library: %s)" % (human(after), human(residue)))
        if not rec.get("touched"):
            reasons.append("memory not usable: %s" % rec.get("touch_error"))
        if not total_ok:
            reasons.append("total %s is not the limit" % human(r.get("total")))
        case.add("4.%d" % i, title, expected, "+%s; over -> %s; after free %s" % (human(delta), over_rc, human(after)),
                 FAIL if reasons else PASS, "; ".join(reasons), data={"limited": rec, "baseline": rb.get(door),
                                                                     "backend": backend})


def case5(ctx, case):
    limits = (25, 50)
    if ctx.sim:
        backend = "driver-probe"
    elif ctx.tools["torch"].get("ok"):
        backend = "torch"
    else:
        # The rule: no PyTorch fails the case. The same measurement with the driver probe and a
        # PTX spin kernel still runs when a C compiler is there, so a GPU without PyTorch reports numbers.
        case.add("5", "SM limits with PyTorch", "+/- 5 points of the limit", "not run", FAIL,
                 "PyTorch is needed: %s%s" % (ctx.tools["torch"].get("reason"),
                                              "; rows 5.x below use driver_probe instead"
                                              if ctx.tools["driver_probe"] else ""))
        backend = "driver-probe"
    if backend == "driver-probe" and not ctx.tools["driver_probe"]:
        if not case.checks:
            case.add("5", "SM limits with driver_probe", "+/- 5 points of the limit", "not run", FAIL,
                     "needs a C compiler (cc) for driver_probe.c: %s" % ctx.tools.get("driver_probe_error",
                                                                                   "none found"))
        return
    d = case_dir(ctx, 5)
    target_s = 0.75 if ctx.args.quick else 1.5
    warm_s = 0.5

    def argv_for(iters, cap_s):
        if backend == "torch":
            return [ctx.python, CASES_PY, "torch-compute", "--iters", str(iters), "--target-s", str(target_s),
                    "--cap-s", str(cap_s), "--warm-s", str(warm_s), "--per-graph", "10"]
        if ctx.sim:
            # vgpu_spin costs 1 ms per wave of the simulated device; one block per SM is one wave.
            return [ctx.tools["driver_probe"], "saturate", os.path.join(HERE, "sim_kernels.txt"), "vgpu_spin",
                    str(iters), str(target_s), str(cap_s), str(warm_s), "10", "1", "256", "1000"]
        # A real GPU: 4 blocks of 256 threads per SM (resident together on every GPU since Maxwell), each
        # spinning 1 ms on its SM's clock.
        return [ctx.tools["driver_probe"], "saturate", os.path.join(HERE, "kernels.ptx"), "vgpu_spin",
                str(iters), str(target_s), str(cap_s), str(warm_s), "10", "4", "256", "1000"]

    base = run_step(ctx, case, "reference (no library)", argv_for(0, 4 * target_s), ctx.env(), 150)
    problem = step_problem(base)
    if problem:
        case.add("5.0", "reference run (no library)", "runs", "-", FAIL, problem)
        return
    rb = base["result"]["modes"]
    desc = "driver_probe, %s kernel" % ("simulated" if ctx.sim else "PTX spin")
    if backend == "torch":
        desc = "%dx%d %s matmul" % (base["result"]["n"], base["result"]["n"], base["result"]["dtype"])
    case.add("5.0", "reference run (no library)", "runs",
             "%s: eager %.3f ms/iter, graph %.3f ms/iter" % (desc, rb["eager"]["per_iter_ms"],
                                                            rb["graph"]["per_iter_ms"]), PASS, data=base["result"])
    iters = rb["eager"]["iters"]
    for p in limits:
        # What this GPU gives at p % duty without any limiter: the throughput the limit should come
        # to. A GPU held at its power limit by the saturating reference clocks higher when it idles
        # part of the time, so p % of the device's time is more than p % of the reference's
        # throughput (an H200 runs this matmul 13 % faster at 50 % duty). Measured with PyTorch
        # only; the driver probe (and the simulated driver, which has no clocks) is judged against p.
        duty = None
        if backend == "torch":
            dstep = run_step(ctx, case, "%d%% duty, no library" % p,
                             argv_for(iters, 3 * target_s * 100.0 / p) + ["--duty", str(p)], ctx.env(),
                             2 * (3 * target_s * 100.0 / p + warm_s) + 90)
            if not step_problem(dstep):
                duty = dstep["result"]["modes"]
        expected_s = target_s * 100.0 / p
        cap_s = 2.5 * expected_s
        step = run_step(ctx, case, "SM limit %d%%" % p, argv_for(iters, cap_s),
                        ctx.env(lib=True, region=os.path.join(d, "sm%d" % p, "vgpu.cache"), sm_limit=p),
                        2 * (cap_s + warm_s + expected_s / 10) + 90)
        problem = step_problem(step)
        for mode, label in (("eager", "eager"), ("graph", "CUDA graph replay")):
            cid = "5.%d%s" % (p, "g" if mode == "graph" else "")
            title = "SM %d%%, %s" % (p, label)
            target = float(p)
            basis = "of unlimited"
            if duty and duty.get(mode, {}).get("per_iter_ms"):
                target = 100.0 * rb[mode]["per_iter_ms"] / duty[mode]["per_iter_ms"]
                basis = "(what %d %% duty gives here)" % p
            expected = "%.1f +/- 5 %% %s" % (target, basis)
            if problem:
                case.add(cid, title, expected, "-", FAIL, problem)
                continue
            m = step["result"]["modes"][mode]
            rel = 100.0 * rb[mode]["per_iter_ms"] / m["per_iter_ms"] if m["per_iter_ms"] > 0 else float("inf")
            ok = abs(rel - target) <= 5.0
            reason = ""
            if not ok:
                reason = ("throughput is the unlimited one: the compute limiter is not active in this build"
                          if rel > 90 else "outside the +/-5 point band")
            measured = "%.1f %% (%d iters in %.2f s)" % (rel, m["iters"], m["ms"] / 1000.0)
            data = {"relative_percent": rel, "target_percent": target, "limited": m, "reference": rb[mode]}
            if duty and duty.get(mode, {}).get("kernel_ms_per_iter"):
                # The device's busy share under the limit, if its kernels ran as fast as at p % duty.
                busy = 100.0 * duty[mode]["kernel_ms_per_iter"] / m["per_iter_ms"]
                measured += "; device busy ~%.1f %%" % busy
                data.update({"duty_run": duty[mode], "device_busy_percent": busy})
            case.add(cid, title, expected, measured, PASS if ok else FAIL, reason, data=data)


def median(xs):
    return statistics.median(xs) if xs else None


def interleaved_medians(ctx, case, label, argv, configs, rounds, timeout_s, reserve_s):
    """Runs `argv` once per configuration per round, interleaved so that drift hits every
    configuration alike, and collects each process's `median_ns`. Stops early when less than
    `reserve_s` of the time budget is left. Returns ({name: [median_ns]}, [problems])."""
    per = {name: [] for name, _ in configs}
    errors = []
    for r in range(rounds):
        if ctx.remaining() < reserve_s:
            errors.append("stopped after %d rounds: the time budget ran out" % r)
            break
        for name, env_pair in configs:
            step = run_step(ctx, case, "%s%s round %d" % (label, name, r + 1), argv, env_pair, timeout_s)
            problem = step_problem(step)
            if problem:
                errors.append("%s: %s" % (name, problem))
            else:
                per[name].append(step["result"]["median_ns"])
    return per, errors


def case6(ctx, case):
    quick = ctx.args.quick
    iters, reps, rounds = (10000, 3, 3) if quick else (20000, 5, 5)
    if ctx.tools["driver_probe"]:
        module = os.path.join(HERE, "sim_kernels.txt" if ctx.sim else "kernels.ptx")
        argv = [ctx.tools["driver_probe"], "launches", module, "vgpu_noop", str(iters), str(reps), "2000"]
        backend = "driver_probe (cuLaunchKernel via dlsym)"
    elif ctx.tools["torch"].get("ok"):
        argv = [ctx.python, CASES_PY, "torch-launches", "--iters", str(iters), "--reps", str(reps)]
        backend = "PyTorch x.add_(1) (no C compiler)"
    else:
        case.add("6", "launch overhead", "<= 1.05x", "not run", SKIP,
                 "needs a C compiler (cc) or PyTorch: %s" % ctx.tools["torch"].get("reason"))
        return
    d = case_dir(ctx, 6)
    configs = [("base", ctx.env()),
               ("lib", ctx.env(lib=True, region=os.path.join(d, "nolimit", "vgpu.cache"))),
               ("lib+mem", ctx.env(lib=True, region=os.path.join(d, "memlimit", "vgpu.cache"),
                                   mem_limit=ctx.limit_env))]
    per, errors = interleaved_medians(ctx, case, "", argv, configs, rounds, 60, reserve_s=10)
    base = median(per["base"])
    for cid, name, title in (("6.1", "lib", "launch overhead, library, no limits"),
                             ("6.2", "lib+mem", "launch overhead, with a memory limit")):
        expected = "<= 1.05x or <= +100 ns per launch"
        lib = median(per[name])
        if base is None or lib is None:
            case.add(cid, title, expected, "-", FAIL, "; ".join(errors) or "no measurement")
            continue
        ratio = lib / base
        ok = ratio <= 1.05 or lib - base <= 100.0
        case.add(cid, title, expected, "%.3fx (%.0f vs %.0f ns/launch)" % (ratio, lib, base), PASS if ok else FAIL,
                 "" if ok else "more than the launch-path budget (design.md: tens of ns per call)",
                 data={"backend": backend, "per_process_median_ns": per, "ratio": ratio})
    case6_paced(ctx, case, d, rounds)


def case6_paced(ctx, case, d, rounds):
    """6.3/6.4: an SM-limited launch that is not throttled (bursts with idle gaps), against the same
    bursts without the library and with a memory limit only: what the limiter adds."""
    rounds = max(rounds, 5)
    if not ctx.tools["driver_probe"]:
        case.add("6.3", "unthrottled launch under SM limit 50 %", "<= +50 ns over 6.4's memory-limit run",
                 "not run", SKIP, "needs a C compiler (cc): the bursts are timed in C")
        return
    bursts, burst = (25, 1000) if ctx.args.quick else (60, 1000)
    module = os.path.join(HERE, "sim_kernels.txt" if ctx.sim else "kernels.ptx")
    argv = [ctx.tools["driver_probe"], "paced", module, "vgpu_noop", str(bursts), str(burst)]
    configs = [("base", ctx.env()),
               ("lib+mem", ctx.env(lib=True, region=os.path.join(d, "paced-mem", "vgpu.cache"),
                                   mem_limit=ctx.limit_env)),
               ("lib+sm", ctx.env(lib=True, region=os.path.join(d, "paced-sm", "vgpu.cache"),
                                  mem_limit=ctx.limit_env, sm_limit=50))]
    per, errors = interleaved_medians(ctx, case, "paced ", argv, configs, rounds, 120, reserve_s=20)
    base, mem, sm = median(per["base"]), median(per["lib+mem"]), median(per["lib+sm"])
    if None in (base, mem, sm):
        for cid, title in (("6.3", "unthrottled launch under SM limit 50 %"),
                           ("6.4", "unthrottled launch under SM limit 50 %, all of libvgpu")):
            case.add(cid, title, "-", "-", FAIL, "; ".join(errors) or "no measurement")
        return
    # Noise: half the spread of one configuration's per-process medians (the widest of the two
    # compared). On a real GPU a launch takes microseconds and processes differ by hundreds of ns
    # (clocks, cores), so a difference inside that band says nothing either way.
    noise = max((max(v) - min(v)) / 2.0 for v in (per["lib+mem"], per["lib+sm"]))
    data = {"per_process_median_ns": per, "bursts": bursts, "burst": burst, "noise_ns": noise}
    added = sm - mem
    measured = "%+.0f ns (%.0f vs %.0f ns/launch; noise +/-%.0f)" % (added, sm, mem, noise)
    if added <= 50.0:
        status, reason = PASS, ""
    elif added <= 50.0 + noise:
        status = SKIP
        reason = ("not resolvable on this machine: the difference is inside the +/-%.0f ns spread between "
                  "processes; benches/overhead.rs (paced) measures it on the simulated driver" % noise)
    else:
        status, reason = FAIL, "the limiter's fast path costs more than issue 4 allows"
    case.add("6.3", "unthrottled launch under SM limit 50 %", "SM limit adds <= 50 ns (vs memory limit only)",
             measured, status, reason, data=data)
    ratio = sm / base
    ok = ratio <= 1.05 or sm - base <= 100.0
    case.add("6.4", "unthrottled launch under SM limit 50 %, all of libvgpu", "<= 1.05x or <= +100 ns per launch",
             "%.3fx (%.0f vs %.0f ns/launch)" % (ratio, sm, base), PASS if ok else FAIL,
             "" if ok else "more than the launch-path budget", data=data)


def case7(ctx, case):
    n = 12 if ctx.args.quick else 30
    d = case_dir(ctx, 7)
    region = os.path.join(d, "vgpu.cache")
    argv = [ctx.python, "-c", "pass"]
    configs = [("base", ctx.env()), ("lib", ctx.env(lib=True, region=region, mem_limit=ctx.limit_env))]
    times = {"base": [], "lib": []}
    bad = []
    for i in range(n + 2):
        if ctx.remaining() < 10:
            break
        for name, (env, _) in configs:
            t0 = time.perf_counter()
            p = ctx.spawn(argv, env)
            try:
                out, err = p.communicate(timeout=ctx.clamp(20))
            except subprocess.TimeoutExpired:
                ctx.reap(p, kill=True)
                out, err = p.communicate()
            finally:
                ctx.reap(p)
            dt = time.perf_counter() - t0
            if p.returncode != 0 or out or err:
                bad.append({"config": name, "rc": p.returncode, "stdout": tail(out, 300), "stderr": tail(err, 300)})
            if i >= 2:  # the first two rounds warm the page cache
                times[name].append(dt * 1000.0)
    case.steps.append({"name": "python -c pass x%d each" % n, "argv": argv, "env_set": configs[1][1][1],
                       "ms": times})
    base, lib = median(times["base"]), median(times["lib"])
    if base is None or lib is None:
        case.add("7.1", "`python -c pass` start-up", "<= 1.10x or <= +2 ms", "-", FAIL,
                 "the time budget ran out before the runs")
        return
    ratio = lib / base
    ok = ratio <= 1.10 or lib - base <= 2.0
    # The minimums are shown too: on a busy host the medians move, the fastest runs much less.
    min_ratio = min(times["lib"]) / min(times["base"])
    case.add("7.1", "`python -c pass` start-up", "<= 1.10x or <= +2 ms (medians)",
             "%.3fx (%.1f vs %.1f ms, median of %d; fastest %.3fx)" % (ratio, lib, base, len(times["lib"]), min_ratio),
             PASS if ok else FAIL, "" if ok else "start-up slower than the budget (a busy host shows here too: compare "
             "the fastest runs, and rerun with --only 7)", data={"ratio": ratio, "min_ratio": min_ratio, "ms": times})
    made = os.path.exists(region)
    quiet = not bad
    case.add("7.2", "never touches CUDA: no trace", "exit 0, no output, no region file",
             "%s, %s" % ("region file created" if made else "no region file",
                         "quiet" if quiet else "%d runs misbehaved" % len(bad)),
             PASS if quiet and not made else FAIL,
             "" if quiet and not made else "a process without CUDA must see no change", data={"bad": bad[:5]})


# Run in this order (the compute case, the longest and the one a throttling bug can stretch, goes last);
# reported by number.
CASES = [
    (1, "PyTorch under CUDA_DEVICE_MEMORY_LIMIT", case1),
    (2, "nvidia-smi inside the limited environment", case2),
    (3, "two processes, one region, one limit", case3),
    (4, "every allocation API counted", case4),
    (6, "kernel launch overhead", case6),
    (7, "start-up of a process that never touches CUDA", case7),
    (5, "compute limit (CUDA_DEVICE_SM_LIMIT)", case5),
]

# Rough worst-case seconds per case, to refuse starting one that cannot finish inside the budget.
MIN_SECONDS = {1: 30, 2: 10, 3: 15, 4: 15, 5: 40, 6: 15, 7: 10}


def hygiene(ctx, report):
    """The GPU as we found it: no process of ours left, memory back, settings unchanged."""
    case = Case(8, "GPU left as found")
    alive = [pid for pid in ctx.all_pids if os.path.exists("/proc/%d" % pid) and _not_zombie(pid)]
    reasons = []
    if alive:
        reasons.append("processes still alive: %s" % alive)
    leftovers = [n for n in os.listdir(ctx.work) if n.startswith("case")]
    if leftovers:
        reasons.append("case folders not removed: %s" % leftovers)
    measured = "%d processes started, none left" % len(ctx.all_pids) if not alive else "%d left" % len(alive)
    if ctx.tools.get("nvidia_smi"):
        try:
            env = ctx.base_env()
            q = smi_query(ctx, ["memory.used", "compute_mode", "persistence_mode"], env=env)
            apps = subprocess.run([ctx.tools["nvidia_smi"], "--query-compute-apps=pid", "--format=csv,noheader",
                                   "-i", str(ctx.args.device)], env=env, stdout=subprocess.PIPE,
                                  universal_newlines=True, timeout=ctx.clamp(30)).stdout.split()
            ours = sorted(set(int(a) for a in apps if a.strip().isdigit()) & set(ctx.all_pids))
            if ours:
                reasons.append("GPU still lists our processes: %s" % ours)
            for key in ("compute_mode", "persistence_mode"):
                if q[key] != ctx.gpu.get(key):
                    reasons.append("%s changed: %s -> %s" % (key, ctx.gpu.get(key), q[key]))
            used_delta = int(q["memory.used"]) * MiB - ctx.gpu["used"]
            measured += "; GPU memory used %+d MiB vs start" % (used_delta // MiB)
            case.steps.append({"name": "nvidia-smi at the end", "result": q, "compute_apps": apps})
            if abs(used_delta) > 256 * MiB:
                measured += " (other tenants?)"
        except Exception as e:  # noqa: BLE001
            reasons.append("nvidia-smi at the end: %s" % e)
    case.add("8.1", "GPU left as found", "no process of ours, region files removed, settings unchanged", measured,
             FAIL if reasons else PASS, "; ".join(reasons))
    return case


def _not_zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# ------------------------------------------------------------------------------------------------------------
# Output.


def print_table(report, cases, out=sys.stdout):
    gpu = report.get("gpu", {})
    out.write("\nvgpu GPU acceptance: %s%s (GPU %s, %s), driver %s\n" % (
        "SIMULATED " if report.get("mode") == "sim" else "", gpu.get("name"), gpu.get("index"),
        human(gpu.get("total")), gpu.get("driver_version")))
    out.write("library: %s\nmemory limit: %s\n\n" % (report["lib"]["path"] if report.get("lib") else "?",
                                                     report.get("limit", {}).get("note")))
    widths = [5, 38, 34, 44, 6]
    head = ["case", "check", "expected", "measured", "result"]

    def row(cells):
        wrapped = [textwrap.wrap(str(c), w) or [""] for c, w in zip(cells, widths)]
        for i in range(max(len(w) for w in wrapped)):
            out.write("  ".join((w[i] if i < len(w) else "").ljust(width)
                                for w, width in zip(wrapped, widths)).rstrip() + "\n")

    row(head)
    out.write("  ".join("-" * w for w in widths) + "\n")
    for case in cases:
        for c in case.checks:
            row([c.cid, c.title, c.expected, c.measured, c.status])
    notes = [(c.cid, c.status, c.reason) for case in cases for c in case.checks if c.reason and c.status != PASS]
    if notes:
        out.write("\n")
        for cid, status, reason in notes:
            out.write("\n".join(textwrap.wrap("%s %s: %s" % (cid, status, reason), 120,
                                              subsequent_indent="    ")) + "\n")
    s = report["summary"]
    if report.get("interrupted"):
        out.write("\nINTERRUPTED (%s): the cases after the last row did not run\n" % report["interrupted"])
    out.write("\n%d passed, %d failed, %d skipped in %.0f s; full results: %s\n" % (
        s["pass"], s["fail"], s["skip"], report.get("duration_s", 0), report.get("out")))
    out.flush()


def main(argv):
    p = argparse.ArgumentParser(description="vgpu acceptance on a real NVIDIA GPU (see scripts/gpu-acceptance.sh)")
    p.add_argument("--lib", required=True, help="the libvgpu.so to test")
    p.add_argument("--out", default="gpu-acceptance.json", help="where the JSON results go")
    p.add_argument("--device", type=int, default=0, help="NVML index of the GPU (as nvidia-smi -i)")
    p.add_argument("--quick", action="store_true", help="shorter loops and fewer repeats")
    p.add_argument("--only", default="", help="comma list of case numbers to run, e.g. 2,3")
    p.add_argument("--python", default="", help="the Python with PyTorch/CuPy (default: this one)")
    p.add_argument("--nvcc", default="", help="nvcc to use for case 4 when CuPy is missing")
    p.add_argument("--sim", action="store_true", help="run against the simulated driver in target/sim (no GPU)")
    p.add_argument("--sim-devices", default=DEFAULT_SIM_DEVICES, help="SIMGPU_DEVICES for --sim (one device)")
    p.add_argument("--work", required=True, help="scratch folder (the shell script makes and removes it)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        only = {int(x) for x in args.only.split(",") if x.strip()}
    except ValueError:
        p.error("--only takes case numbers, e.g. --only 2,3")
    if only - {n for n, _, _ in CASES}:
        p.error("--only: cases are 1 to 7")

    def on_term(signum, frame):
        # Once: the clean-up that follows (kill our process groups, write the JSON) must not be cut short by
        # a second signal (Ctrl-C reaches both the shell script and us; the script then sends SIGTERM).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Interrupted("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    ctx = Ctx(args)
    os.makedirs(ctx.work, exist_ok=True)
    started = datetime.datetime.now()
    report = {"tool": "vgpu gpu-acceptance", "format": 1, "mode": "sim" if args.sim else "gpu",
              "started": started.isoformat(timespec="seconds"), "host": platform.node(),
              "kernel": platform.release(), "args": {k: v for k, v in vars(args).items() if k != "work"},
              "out": os.path.abspath(args.out)}
    cases = []
    status = 0
    try:
        err = preflight(ctx, report)
        pre = report.pop("_preflight_case", None)
        report["preflight_steps"] = pre.steps if pre else []
        report["tools"] = ctx.tools
        report["gpu"] = ctx.gpu
        report["limit"] = {"bytes": ctx.limit, "env": getattr(ctx, "limit_env", None), "note": ctx.limit_note}
        if err:
            sys.stderr.write("gpu-acceptance: %s\n" % err)
            report["error"] = err
            status = 2
            return status
        sys.stderr.write("gpu-acceptance: %s %s, %s, limit %s\n" % (
            "simulated" if args.sim else "GPU", ctx.gpu.get("name"), human(ctx.gpu.get("total")), ctx.limit_note))
        for number, title, fn in CASES:
            if only and number not in only:
                continue
            case = Case(number, title)
            cases.append(case)
            if ctx.remaining() < MIN_SECONDS[number]:
                case.add(str(number), title, "runs", "not run", FAIL,
                         "the time budget (%.0f s) ran out before this case" % args.budget_s)
                continue
            sys.stderr.write("gpu-acceptance: case %d: %s ...\n" % (number, title))
            t0 = time.monotonic()
            try:
                fn(ctx, case)
            except Interrupted:
                raise
            except Exception as e:  # noqa: BLE001  (one broken case must not hide the others)
                case.add("%d.x" % number, "case %d ran to the end" % number, "no error", "-", FAIL,
                         "%s: %s" % (type(e).__name__, e), data={"traceback": traceback.format_exc()})
            finally:
                ctx.kill_all()
                shutil.rmtree(os.path.join(ctx.work, "case%d" % number), ignore_errors=True)
                case.duration_s = time.monotonic() - t0
            sys.stderr.write("gpu-acceptance: case %d done in %.1f s: %s\n" % (
                number, case.duration_s, " ".join("%s=%s" % (c.cid, c.status) for c in case.checks)))
        cases.append(hygiene(ctx, report))
    except Interrupted as e:
        report["interrupted"] = str(e)
        status = 130
    finally:
        ctx.kill_all()
        cases.sort(key=lambda c: c.number)  # run order differs (case 5 goes last)
        report["cases"] = [c.to_json() for c in cases]
        counts = {PASS: 0, FAIL: 0, SKIP: 0}
        for c in cases:
            for chk in c.checks:
                counts[chk.status] += 1
        report["summary"] = {"pass": counts[PASS], "fail": counts[FAIL], "skip": counts[SKIP]}
        report["duration_s"] = round(time.monotonic() - ctx.started, 1)
        report["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        with open(args.out + ".tmp", "w") as f:
            json.dump(report, f, indent=2, sort_keys=True, default=str)
        os.replace(args.out + ".tmp", args.out)
        if cases:
            print_table(report, cases)
        if status == 0 and counts[FAIL]:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
