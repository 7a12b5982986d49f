"""The CPU priority of the server's helper processes: the console's and the
readers'.

Owns: below_payments(), which a helper process calls first thing, and the
policy it sets. Used by: server/readers.py (each reader process as it
starts), server/console/__main__.py (the console process).

Why the kernel's idle class and not only nice 19: on Linux a nice 19 task
still gets a share of a busy core (weight 15 against a payment thread's
1024) and, once picked, runs until the scheduler's next look; a
SCHED_IDLE task (weight 3) gives the core up at once to any ordinary task
that wakes, such as a Pay thread woken by the network. Pages then wait
while Pay keeps the cores busy, which is the order we want: a page may
wait, a sale should not. It cannot stop the helpers' work from sweeping
the caches in the payments' gaps (as the README's login-flood bench found
of password hashes at nice 19). nice 19 stays set as well, for kernels or
containers that refuse the class.
"""

import os

NICENESS = 19


def below_payments() -> str:
    """The lowest CPU priority for the calling thread and the threads it
    starts afterwards (on Linux both are per thread and inherited): nice 19,
    then SCHED_IDLE where the kernel has it. Returns what was set: "idle",
    "nice" or "unchanged" (the caller logs it if it cares)."""
    done = "unchanged"
    try:
        os.nice(NICENESS - os.nice(0))
        done = "nice"
    except OSError:
        pass  # still correct, only not yielding to payments
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            done = "idle"
        except OSError:
            pass  # a container without the right: nice 19 alone
    return done
