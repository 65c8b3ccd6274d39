"""``python -m pdclm`` (and ``torchrun ... -m pdclm``) runs the CLI.

Under ``torchrun`` (which names an error file per rank), a rank's uncaught exception is
recorded there, so torchrun's failure summary shows that rank's traceback instead of
``error_file: <N/A>``; torch is imported for it only then (``--help`` stays fast).
"""

import os
import sys

from pdclm.cli import main

if "TORCHELASTIC_ERROR_FILE" in os.environ:
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
sys.exit(main())
