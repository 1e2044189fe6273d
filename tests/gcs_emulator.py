"""gcp-storage-emulator (2026.7.19), patched to speak enough of GCS's generation protocol for
tensorstore (Orbax's array store), started by tests/test_gcs.py.

Root cause of tensorstore's "Malformed StorageGeneration" (OCDBT manifest writes, Orbax saves):
the stock emulator ignores the ifGenerationMatch / ifGenerationNotMatch query parameters and
sends no x-goog-generation header on media downloads. tensorstore revalidates its cached
manifest with `GET ...?alt=media&ifGenerationNotMatch=G`; real GCS answers 304, the emulator
answers 200 with no generation header, so tensorstore records generation 0 ("FromUint64(0)") and
its next conditional write (`ifGenerationMatch=<that generation>`) is rejected client-side as a
malformed generation.

Fixes (all in the emulator, nothing in the product):
1. object downloads (GET .../o/NAME?alt=media and /download/...) send x-goog-generation,
   x-goog-metageneration, x-goog-stored-content-length, ETag, on 200 and 206;
2. ifGenerationMatch / ifGenerationNotMatch / ifMetagenerationMatch / ifMetagenerationNotMatch
   are honoured as GCS does: reads -> 304 (NotMatch held) / 412 (Match failed); uploads
   (media, multipart, resumable start) and DELETE -> 412 when a condition fails
   (ifGenerationMatch=0 means "only if the object does not exist");
3. (for other clients, harmless here) a zero-byte uploadType=media insert no longer crashes
   the server, and GET /storage/v1/b/B/storageLayout exists (TF's HNS check).

Run `python tests/gcs_emulator.py start --host 127.0.0.1 --port P --default-bucket B --in-memory`
(the arguments of `python -m gcp_storage_emulator`).
"""

from http import HTTPStatus

_APPLIED = False


def apply():
  global _APPLIED
  if _APPLIED:
    return
  _APPLIED = True
  from gcp_storage_emulator import server
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects

  def _q(request, name):
    v = request.query.get(name)
    return v[0] if v else None

  def _current(storage, bucket, name):
    try:
      return storage.get_file_obj(bucket, name)
    except NotFound:
      return None

  def _failed(request, obj, read):
    """HTTP status for a failed precondition, or None when all conditions hold."""
    gen = int(obj["generation"]) if obj else 0  # 0 == "no live object", as in GCS
    meta = int(obj.get("metageneration") or 1) if obj else None
    gm, gnm = _q(request, "ifGenerationMatch"), _q(request, "ifGenerationNotMatch")
    mm, mnm = _q(request, "ifMetagenerationMatch"), _q(request, "ifMetagenerationNotMatch")
    if gm is not None and int(gm) != gen:
      return HTTPStatus.PRECONDITION_FAILED
    if mm is not None and (meta is None or int(mm) != meta):
      return HTTPStatus.PRECONDITION_FAILED
    if gnm is not None and int(gnm) == gen:
      return HTTPStatus.NOT_MODIFIED if read else HTTPStatus.PRECONDITION_FAILED
    if mnm is not None and meta is not None and int(mnm) == meta:
      return HTTPStatus.NOT_MODIFIED if read else HTTPStatus.PRECONDITION_FAILED
    return None

  def _reject(response, status):
    response.status = status
    if status == HTTPStatus.PRECONDITION_FAILED:
      response.json(
        {
          "error": {
            "code": 412,
            "message": "Precondition Failed",
            "errors": [
              {"domain": "global", "reason": "conditionNotMet", "message": "Precondition Failed"}
            ],
          }
        }
      )

  def _generation_headers(response, obj):
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration") or 1)
    response["x-goog-stored-content-length"] = str(obj.get("size"))
    if obj.get("etag"):
      response["ETag"] = obj["etag"]

  orig_download, orig_get = objects.download, objects.get
  orig_insert, orig_delete = objects.insert, objects.delete
  orig_media_upload = objects._media_upload

  def download(request, response, storage, *args, **kwargs):
    obj = _current(storage, request.params["bucket_name"], request.params["object_id"])
    if obj is not None:
      status = _failed(request, obj, read=True)
      if status is not None:
        return _reject(response, status)
    orig_download(request, response, storage)
    if obj is not None and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      _generation_headers(response, obj)

  def get(request, response, storage, *args, **kwargs):
    if _q(request, "alt") == "media":
      return download(request, response, storage)
    if not _q(request, "softDeleted"):
      obj = _current(storage, request.params["bucket_name"], request.params["object_id"])
      if obj is not None:
        status = _failed(request, obj, read=True)
        if status is not None:
          return _reject(response, status)
    return orig_get(request, response, storage)

  def insert(request, response, storage, *args, **kwargs):
    upload_type = _q(request, "uploadType")
    if upload_type in ("media", "multipart", "resumable") and "upload_id" not in request.query:
      name = _q(request, "name")
      if name is None and upload_type == "multipart":
        name = (request.data or {}).get("meta", {}).get("name")
      if name is None and upload_type == "resumable" and isinstance(request.data, dict):
        name = request.data.get("name")
      if name is not None:
        obj = _current(storage, request.params["bucket_name"], name)
        status = _failed(request, obj, read=False)
        if status is not None:
          return _reject(response, status)
    return orig_insert(request, response, storage)

  def delete(request, response, storage, *args, **kwargs):
    obj = _current(storage, request.params["bucket_name"], request.params["object_id"])
    if obj is not None:
      status = _failed(request, obj, read=False)
      if status is not None:
        return _reject(response, status)
    return orig_delete(request, response, storage)

  def _media_upload(request, response, storage):
    if request.data is None:  # zero-byte body: the stock handler calls len(None)
      request._data = b""
    return orig_media_upload(request, response, storage)

  def storage_layout(request, response, storage, *args, **kwargs):
    response.json(
      {
        "kind": "storage#storageLayout",
        "bucket": request.params["bucket_name"],
        "location": "US",
        "locationType": "multi-region",
        "hierarchicalNamespace": {"enabled": False},
      }
    )

  replace = {orig_download: download, orig_get: get, orig_insert: insert, orig_delete: delete}
  objects.download, objects.get, objects.insert, objects.delete = download, get, insert, delete
  objects._media_upload = _media_upload
  # server.HANDLERS captured the original function objects at import time.
  server.HANDLERS = (
    (r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/storageLayout$", {server.GET: storage_layout}),
  ) + tuple(
    (regex, {m: replace.get(f, f) for m, f in handlers.items()})
    for regex, handlers in server.HANDLERS
  )


if __name__ == "__main__":
  import sys

  apply()
  from gcp_storage_emulator.__main__ import main

  sys.exit(main(sys.argv[1:]))
