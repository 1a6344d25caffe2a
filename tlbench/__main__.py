from tlbench.cli import entry

entry()
