from exporter.cli import app

app(prog_name="dit-export")
