from edgeloop_cli.demo import main

main()
