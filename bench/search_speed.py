"""How long the search takes: `search.search` for a model over every GPU kind, node size, node count and batch,
in process (the catalog already read), median of several runs. Usage: python bench/search_speed.py [d34] [40]"""
import statistics
import sys
import time

from nanolaunch import prices, search
from nanolaunch.config import RunConfig


def main() -> None:
    depth = int(sys.argv[1].lstrip("d")) if len(sys.argv) > 1 else 34
    ratio = float(sys.argv[2]) if len(sys.argv) > 2 else 40.0
    config = RunConfig.build(depth=depth, ratio=ratio)
    start = time.perf_counter()
    clouds = prices.enabled_clouds()  # imports SkyPilot where it keeps a state database
    enabled = time.perf_counter() - start
    start = time.perf_counter()
    offers = prices.offers()
    first = time.perf_counter() - start
    times = []
    for _ in range(20):
        start = time.perf_counter()
        found = search.search(config, search.Fixed())
        times.append(time.perf_counter() - start)
    print(f"d{depth} ratio {ratio:g}: enabled clouds read in {enabled * 1e3:.0f} ms ({clouds.note}); "
          f"{len(offers)} offers read in {first * 1e3:.1f} ms; search over "
          f"{found.considered} priced node shapes: median {statistics.median(times) * 1e3:.1f} ms, "
          f"min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f} (20 runs); chose {found.chosen.describe()}")


if __name__ == "__main__":
    main()
