from ipvslb.cli import main

main()
