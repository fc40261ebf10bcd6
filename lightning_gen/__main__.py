from lightning_gen.cli import main

main()
