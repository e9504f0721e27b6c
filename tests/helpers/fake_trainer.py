"""A stand-in for the training entry points, for testing the Slurm launch plumbing quickly.

Behaves like the real trainer where the launcher relies on it: started by torchrun (RANK,
WORLD_SIZE, MASTER_ADDR from the environment, gloo), ``--load``/``--save`` of an iteration
counter, ``--exit-signal-handler`` (SIGTERM on any rank: all ranks agree at the end of the
iteration, rank 0 saves, everybody exits 0), and a final save. Each iteration sleeps
``FAKE_ITER_S`` seconds. Unknown flags are ignored.
"""

import argparse
import os
import signal
import sys
import time

import torch
import torch.distributed as dist


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--train-iters", type=int, required=True)
    p.add_argument("--save")
    p.add_argument("--load")
    p.add_argument("--exit-signal-handler", action="store_true")
    args, _ = p.parse_known_args()

    got = {"sig": False}
    if args.exit_signal_handler:
        signal.signal(signal.SIGTERM, lambda *_: got.__setitem__("sig", True))

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    start = 0
    marker = os.path.join(args.load or "", "latest_iteration.txt")
    if args.load and os.path.exists(marker):
        start = int(open(marker).read())
        if rank == 0:
            print(f"fake_trainer: resuming from iteration {start}", flush=True)

    def save(it: int) -> None:
        if rank == 0 and args.save:
            os.makedirs(args.save, exist_ok=True)
            with open(os.path.join(args.save, "latest_iteration.txt.tmp"), "w") as f:
                f.write(str(it))
            os.replace(os.path.join(args.save, "latest_iteration.txt.tmp"), os.path.join(args.save, "latest_iteration.txt"))
            print(f"fake_trainer: saved checkpoint at iteration {it}", flush=True)
        dist.barrier()

    it = start
    while it < args.train_iters:
        time.sleep(float(os.environ.get("FAKE_ITER_S", "0.3")))
        it += 1
        if rank == 0:
            print(f"fake_trainer: iteration {it}/{args.train_iters} | world {world} | lm loss: {1.0 / it:.4f}", flush=True)
        flag = torch.tensor([1.0 if got["sig"] else 0.0])
        dist.all_reduce(flag)
        if flag.item() > 0:
            save(it)
            if rank == 0:
                print(f"fake_trainer: exiting after a signal at iteration {it}", flush=True)
            dist.destroy_process_group()
            return 0
    save(it)
    if rank == 0:
        print("fake_trainer: done", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
