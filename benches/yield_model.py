#!/usr/bin/env python3
"""A model of the journal beside uploads, without a broker.

Thread J overwrites 1 MiB and fdatasyncs it in a zero-filled file, with 1 ms between writes
(the client's share of a round trip with one request in flight); thread U writes 8 MiB
objects as new files in 1 MiB O_DIRECT pieces, then fdatasync and a directory fsync. With
--gate, U waits (up to 5 ms) before each piece while J is writing, as uploads give way to
journal appends in the broker (store::Foreground). Prints J's latency and both rates.

    python3 benches/yield_model.py [--gate] [--dir DIR]
"""
import mmap, os, sys, threading, time, statistics
gate = "--gate" in sys.argv
DUR = 10.0; THINK = 1.0e-3; MAXWAIT = 0.005
d = sys.argv[sys.argv.index("--dir") + 1] if "--dir" in sys.argv else "yield-model.tmp"
os.makedirs(d, exist_ok=True)
jpath = d + "/journal"
with open(jpath, "wb") as f:
    f.write(b"\0" * (64 << 20)); f.flush(); os.fsync(f.fileno())
buf = mmap.mmap(-1, 1 << 20); buf.write(os.urandom(1 << 20))
busy = threading.Event()   # set while J writes
idle = threading.Condition()
stop = time.time() + DUR
jl = []; ub = [0]
def journal():
    fd = os.open(jpath, os.O_WRONLY)
    pos = 0
    while time.time() < stop:
        t = time.perf_counter()
        busy.set()
        os.pwrite(fd, buf, pos); os.fdatasync(fd)
        busy.clear()
        with idle: idle.notify_all()
        jl.append((time.perf_counter() - t) * 1000)
        pos = (pos + (1 << 20)) % (64 << 20)
        time.sleep(THINK)
def upload():
    i = 0
    while time.time() < stop:
        i += 1
        p = f"{d}/o{i}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
        for k in range(8):
            if gate and busy.is_set():
                with idle: idle.wait(MAXWAIT)
            os.pwrite(fd, buf, k << 20)
            ub[0] += 1 << 20
        os.fdatasync(fd); os.close(fd)
        dfd = os.open(d, os.O_RDONLY); os.fsync(dfd); os.close(dfd)
        if i > 10: os.unlink(f"{d}/o{i-10}")
tj = threading.Thread(target=journal); tu = threading.Thread(target=upload)
tj.start(); tu.start(); tj.join(); tu.join()
jl.sort()
print(f"gate={gate}: journal n={len(jl)} avg {statistics.mean(jl):.2f} p50 {jl[len(jl)//2]:.2f} p99 {jl[int(len(jl)*.99)]:.2f} ms, "
      f"journal {len(jl)/DUR:.0f} MB/s, upload {ub[0]/DUR/1e6:.0f} MB/s")
for f in os.listdir(d): os.unlink(os.path.join(d, f))
os.rmdir(d)
