"""The service's routes, one router per concept: studies (their trials and front), jobs
(searches and full runs), pages, and the files the pages load."""

from nas.service.routes import assets, jobs, pages, studies

__all__ = ["assets", "jobs", "pages", "studies"]
