from caduceus.cli.main import app

app()
