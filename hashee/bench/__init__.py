"""The deployment benchmark suite (issue #6): ``hashee bench`` and ``hashee demo``.

Public API::

    from hashee.bench import run_bench, CONFIGS
    result = run_bench("bundles/sst2", "sst2-dev", "results/sst2", dense="runs/sst2-dense")
    result["speedups"]["32"]["onnxruntime"]["realised"]

Heavy libraries load inside the functions; each measured backend runs in a worker process.
"""

from hashee.bench.configs import CONFIGS, BenchConfig

__all__ = ["CONFIGS", "BenchConfig", "run_bench"]


def run_bench(*args, **kwargs):
    from hashee.bench.driver import run_bench as run

    return run(*args, **kwargs)


run_bench.__doc__ = "See :func:`hashee.bench.driver.run_bench`."
