"""``python -m crossent`` runs the command line."""

from crossent.cli import main

if __name__ == "__main__":
    main()
