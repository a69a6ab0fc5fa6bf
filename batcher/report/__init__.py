"""``batcher report``: one self-contained HTML page over a job's results (a contact sheet).

* :mod:`batcher.report.model`: what the page shows (:class:`Header`, :class:`Card`), plain data;
* :mod:`batcher.report.build`: the data, streamed from the Parquet results, the job state and the
  images (thumbnails made in the image pool), sampled past the card cap;
* :mod:`batcher.report.render`: the page, from a Jinja2 template with its CSS and JS inline.
"""
