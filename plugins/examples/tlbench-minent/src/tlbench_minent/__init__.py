"""tlbench-minent: the MinEnt strategy, the ``csv_images`` dataset and the ``minent_cnn`` backbone.

Nothing needs importing: once the distribution is installed, tlbench finds the plugins through
the ``tlbench`` entry-point group (see ``pyproject.toml``).
"""

from tlbench_minent.csv_images import CsvImages, read_image_list
from tlbench_minent.minent import MinEnt, mean_entropy
from tlbench_minent.minent_cnn import MinentNets

__all__ = ["MinEnt", "mean_entropy", "MinentNets", "CsvImages", "read_image_list"]
