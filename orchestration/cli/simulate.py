"""``txguard simulate``: write a landing zone of simulated card transactions."""

import click

commands: list[click.Command] = []
