import cvgen_nuke
cvgen_nuke.setup_init()
