"""Built-in dataset plug-ins; importing this package registers them in ``bench.registry.DATASETS``."""

import bench.datasets.embedded  # noqa: F401
import bench.datasets.cremad  # noqa: F401
import bench.datasets.daicwoz  # noqa: F401
import bench.datasets.emodb  # noqa: F401
import bench.datasets.features  # noqa: F401
import bench.datasets.iemocap  # noqa: F401
import bench.datasets.m3ed  # noqa: F401
import bench.datasets.ravdess  # noqa: F401
