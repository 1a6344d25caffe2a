"""tlbench-coral: the Deep CORAL strategy, the ``csv_images`` dataset and the ``coral_cnn`` backbone.

Nothing needs importing: once the distribution is installed, tlbench finds the plugins through
the ``tlbench`` entry-point group (see ``pyproject.toml``).
"""

from tlbench_coral.coral import Coral, coral_loss, covariance
from tlbench_coral.coral_cnn import CoralNets
from tlbench_coral.csv_images import CsvImages, read_image_list

__all__ = ["Coral", "coral_loss", "covariance", "CoralNets", "CsvImages", "read_image_list"]
