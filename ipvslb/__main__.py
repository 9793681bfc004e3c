from ipvslb.cli.main import main

main()
