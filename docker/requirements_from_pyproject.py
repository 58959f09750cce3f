"""Print the project's requirements (base and the extras named in argv[1], comma-separated), one a
line, from pyproject.toml at argv[2]: the images install them in a layer of their own, so editing
the source reinstalls no dependency."""

import sys
import tomllib

extras = [name for name in sys.argv[1].split(",") if name]
with open(sys.argv[2], "rb") as file:
    project = tomllib.load(file)["project"]
requirements = list(project["dependencies"])
for name in extras:
    requirements += project["optional-dependencies"][name]
print("\n".join(requirements))
