import sys

from r1flow.stages.runner import main

sys.exit(main())
