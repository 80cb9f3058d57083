"""Fashion-MNIST as shards: Debian's `dataset-fashion-mnist` package (apt-get download + dpkg -x,
no root), its photos as an ImageNet-layout folder, then the real ingest path. Re-running with
the same settings does nothing.

    python jobs/make_real_data.py [out=data/fashion-mnist] [train_per_class=600] [val_per_class=100]
    python jobs/make_real_data.py idx_dir=/path/to/idx-files   # where apt is not available
"""

from __future__ import annotations

import sys

from pipeline.cli import job_parser, run_job
from pipeline.config import load_config
from pipeline.data.fashion_mnist import FashionMnistConfig, build_fashion_mnist


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], default_config=None).parse_args(argv)
    root = build_fashion_mnist(load_config(FashionMnistConfig, args.config, args.overrides))
    print(
        f"shards: {root / 'shards' / 'train'} (prefix train), {root / 'shards' / 'val'} (prefix val)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
