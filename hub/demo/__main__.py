from hub.demo import main

main()
