"""Built-in dataset plug-ins; importing this package registers them in ``bench.registry.DATASETS``."""

import bench.data.datasets.embedded  # noqa: F401
import bench.data.datasets.cremad  # noqa: F401
import bench.data.datasets.daicwoz  # noqa: F401
import bench.data.datasets.emodb  # noqa: F401
import bench.data.datasets.features  # noqa: F401
import bench.data.datasets.iemocap  # noqa: F401
import bench.data.datasets.m3ed  # noqa: F401
import bench.data.datasets.ravdess  # noqa: F401
