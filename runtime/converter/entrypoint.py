"""Converter container entrypoint: a thin shell over modelyard.convert (the library does the work).

The operator's conversion Job runs:
    --manifest-json '<ModelDeployment>' --store /mnt/store/<path> --source-root /mnt/source
    --termination-log /dev/termination-log
Exit codes: 0 converted and validated; 1 conversion or validation failed (the Job fails at once); 2 bad request.
"""

import sys

from modelyard.convert.main import main

if __name__ == "__main__":
    sys.exit(main())
