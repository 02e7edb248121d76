from rendezvous.cli import main

main()
