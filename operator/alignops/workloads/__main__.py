import sys

from alignops.workloads.entrypoint import main

sys.exit(main(sys.argv[1:]))
