"""Federated fine-tuning of the answer head with Flower (the ``federated`` extra).

- :mod:`.dp` clipping and Gaussian noise of a site's update (numpy);
- :mod:`.data` each site's skewed share of the synthetic task; :mod:`.head` the tuned
  part (answer rows of ``lm_head``) and its features (torch); :mod:`.site` one round on
  a site; :mod:`.aggregate` the aggregator's checks and mean (numpy);
- :mod:`.secure` secure aggregation's parameters and checks, :mod:`.rounds` the record
  and metric of each round (both pure);
- :mod:`.client` / :mod:`.server` / :mod:`.secure_server` the Flower ClientApp and
  ServerApp, plain and SecAgg+ (need ``flwr``, which cannot share a venv with Ray Serve:
  ``make federated-venv``);
- :mod:`.bundle` the app project and its bundle (FAB), :mod:`.trust` the signing key,
  signatures and the sites' trust file, :mod:`.registry` the app registry the SuperLink
  fetches signed bundles from (sites run only bundles signed by a key they trust);
- :mod:`.loopback` / ``python -m mmo_serving.federated local DIR``: SuperLink and SuperNodes
  as processes on loopback, one ``flwr run`` of the signed bundle.
"""
