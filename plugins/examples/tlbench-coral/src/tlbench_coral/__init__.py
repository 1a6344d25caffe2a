"""tlbench-coral: the Deep CORAL strategy and the ``csv_images`` dataset for tlbench.

Nothing needs importing: once the distribution is installed, tlbench finds both plugins through
the ``tlbench`` entry-point group (see ``pyproject.toml``).
"""

from tlbench_coral.coral import Coral, coral_loss, covariance
from tlbench_coral.csv_images import CsvImages, read_image_list

__all__ = ["Coral", "coral_loss", "covariance", "CsvImages", "read_image_list"]
