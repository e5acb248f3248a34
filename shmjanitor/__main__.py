from shmjanitor.cli import main

main()
