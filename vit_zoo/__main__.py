import sys

from .cli import main

if __name__ == "__main__":  # importing this module (as API tools do) runs nothing
    sys.exit(main())
