from pneumoscan.cli import run

run()
