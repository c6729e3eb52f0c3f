"""The memory table of docs/memory.md: every published GPU memory figure (nanolaunch/data/memory_published.csv),
what nanolaunch's model counts for that shape, the error, and each verdict. Usage: python bench/memory_published.py"""
from nanolaunch import memory
from nanolaunch.config import RunConfig
from nanolaunch.planner import memory_for


def main() -> None:
    per_param, source = memory.excess_per_param()
    print("| source | GPU | shape | batch × GPUs | published (GiB) | counted (GiB) | error | excess per param | fitted |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in memory.published():
        print(f"| {r['source']} | {r['gpu']} | d{r['depth']}, vocab {int(r['vocab_size']):,} | {r['device_batch']} × "
              f"{r['world_size']} | {r['allocated_gib']:.2f} | {r['predicted_gib']:.2f} | {r['error']:+.0%} | "
              f"{r['excess_bytes_per_param']:+.1f} B | {r['fitted']} |")
    print(f"\nhigh end: + {per_param:.2f} B per parameter ({source})\n")
    print("| config | counted | high end | usable | verdict |")
    print("|---|---|---|---|---|")
    cases = [(dict(depth=34, ratio=40, gpu="H100:8", device_batch=b), f"d34 ratio 40, 8×H100, batch {b}") for b in (2, 4, 8, 16)]
    cases += [(dict(depth=10, vocab_size=v, gpu="A100:1", device_batch=b), f"d10 vocab {v:,}, 1×A100-40GB, batch {b}")
              for v in (65536, 32768) for b in (16, 32, 64)]
    cases += [(dict(depth=10, gpu="RTX5090:1", device_batch=8), "d10, 1×RTX 5090, batch 8")]
    for fields, name in cases:
        m = memory_for(RunConfig.build(**fields))
        print(f"| {name} | {m.total_gib:.1f} | {m.high_gib:.1f} | {m.usable_gib:.1f} | {m.verdict} |")


if __name__ == "__main__":
    main()
