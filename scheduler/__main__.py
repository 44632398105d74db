from medq.scheduler.cli import main

main()
