from medq.scheduler.cli import main

main(prog_name="medq")  # `python -m medq.scheduler` reads as `medq` in usage lines and completion
