"""Copy a staged pipeline folder into the package (the last step of package_default_model.sh and
package_fast_model.sh): DEST is replaced by STAGE's files, and every JSON names the package folder instead of where
this machine staged it ("source" fields, every "_name_or_path"): no local path ships.

    python benchmarks/ship_folder.py RUN STAGE DEST
"""

import re
import shutil
import sys
from pathlib import Path


def main(run: str, stage: str, dest: str) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(stage, dest)
    names = sorted({run.rstrip("/"), stage.rstrip("/"), str(Path(run).resolve()), str(Path(stage).resolve())},
                   key=len, reverse=True)
    for path in Path(dest).rglob("*.json"):
        text = path.read_text()
        for name in names:
            text = re.sub('"' + re.escape(name) + '(?=["/])', '"' + dest, text)
        path.write_text(text)


if __name__ == "__main__":
    main(*sys.argv[1:])
