from caduceus.cli.main import main

main()
