from clusterimg.cli import main

main()
