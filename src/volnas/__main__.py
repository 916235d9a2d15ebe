from volnas.cli.main import main

main()
