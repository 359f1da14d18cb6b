"""Where the report's templates and Quarto project files are: inside the installed package.

The files themselves stay at the top of the repository, as the design card lays it out
(`templates/*.j2`; `report/_quarto.yml` and `report/include/`). The package reaches them through
three links committed beside this module: `templates → ../../templates`, and
`project/_quarto.yml`, `project/include` into `../../../report/`. A build (sdist or wheel) follows
the links and copies the files into the package, so an installed chimuf renders reports without a
checkout; an editable install sees the live files through the same links. Either way the code
asks `importlib.resources` and never the source tree.

(hatchling's `force-include` would map them into the wheel too, but an editable install would then
not see them: the package is the source folder, which holds no copy. The links serve both.)
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource_dir(name: str) -> Path:
    """The folder `name` of chimuf.report's package data, as a file-system path."""
    return Path(str(files("chimuf.report") / name))


TEMPLATES_DIR = resource_dir("templates")  # the report's Jinja templates
PROJECT_TEMPLATE_DIR = resource_dir("project")  # _quarto.yml and include/, copied into every report
