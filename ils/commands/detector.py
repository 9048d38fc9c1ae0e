"""`ils detector train`: train the YOLO lesion detector of the `yolo` detect backend from boxes."""

from __future__ import annotations

HELP = "train a YOLO lesion detector from box annotations (phantom truth or a VinDr-CXR style CSV)"
DESCRIPTION = (
    "Train an ultralytics YOLO detector offline and write best.pt into the store. --boxes is either a "
    "phantom folder written by `ils sample` (boxes from truth/masks.parquet and the mask PNGs) or a "
    "VinDr-CXR style CSV (image_id,class_name,x_min,y_min,x_max,y_max) with --images naming the image "
    "folder. Use the result as gen.detect.weights with gen.detect.backend=yolo."
)


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["train"], help="what to do (train)")
    parser.add_argument("--boxes", required=True, help="phantom folder URI, or a box CSV URI")
    parser.add_argument("--images", default=None, help="image folder URI (with a CSV): <image_id>.dcm/.png/.jpg")
    parser.add_argument("--out", required=True, help="output folder URI (best.pt, summary.json) or a .pt URI")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--imgsz", type=int, default=640, help="training image size (default 640)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model", default="yolov8n.yaml", help="model config (.yaml) or a local .pt to start from")
    parser.add_argument("--device", default=None, help="cpu, 0, 0,1 ... (default: GPU 0 if present, else cpu)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="CSV only: fraction of images for validation")
    parser.add_argument("--keep-unmapped", action="store_true", help="CSV only: keep classes that map to no lesion")
    parser.add_argument("--from-bbox", action="store_true", help="phantoms: use the bbox column, not mask components")
    parser.add_argument("--amp", action="store_true", help="mixed precision on GPU (ultralytics' AMP check needs a download)")
    parser.add_argument("--seed", type=int, default=0)


def run(args, cfg) -> int:
    import json

    from ils.store import Store
    from ilsgen.detector_train import DetectorTrainError, phantom_images, train_detector, vindr_images

    store = Store.from_config(cfg.store)
    s3 = {"s3_endpoint": cfg.store.endpoint, "s3_region": cfg.store.region}
    if args.boxes.lower().endswith(".csv"):
        if not args.images:
            raise DetectorTrainError("a box CSV needs --images (the folder holding the images)")
        if not 0.0 <= args.val_fraction < 1.0:
            raise DetectorTrainError("--val-fraction must be in [0, 1)")
        images = vindr_images(store, args.boxes, args.images, args.val_fraction, args.keep_unmapped)
        data_store = store
    else:
        data_store = store.child(args.boxes)
        images = phantom_images(data_store, use_bbox_column=args.from_bbox)
    summary = train_detector(
        images, data_store, store, store.uri(args.out), model=args.model, epochs=args.epochs, imgsz=args.imgsz,
        batch=args.batch, device=args.device, amp=args.amp, seed=args.seed, s3_options=s3,
    )
    print(json.dumps(summary, indent=1))
    return 0
