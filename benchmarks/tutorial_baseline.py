"""TensorFlow's transfer-learning tutorial recipe, as a plain Keras script: "what a user would do instead".

Unmodified in what matters for the comparison: MobileNetV2 at 160x160 with ImageNet weights, batch 32,
RandomFlip("horizontal") + RandomRotation(0.2), 10 epochs with the base frozen (Adam 1e-4), then 10 epochs
fine-tuning from layer 100 (RMSprop 1e-5), BinaryCrossentropy(from_logits=True). The one difference: the
tutorial holds out 1/5 of the validation batches as a test set; here the whole validation folder (1000 images)
is the validation set, as in the pipeline's evaluation, so both numbers are over the same images.

Usage: python benchmarks/tutorial_baseline.py --data DIR --weights FILE --output RESULT.json
"""

import argparse
import json
import os
import time

import keras
import tensorflow as tf

IMG_SIZE = (160, 160)
BATCH_SIZE = 32
BASE_LEARNING_RATE = 0.0001
INITIAL_EPOCHS = 10
FINE_TUNE_EPOCHS = 10
FINE_TUNE_AT = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="cats_and_dogs_filtered folder (train/ and validation/)")
    parser.add_argument("--weights", required=True, help="MobileNetV2 no-top weights file")
    parser.add_argument("--output", required=True, help="JSON file for the results")
    args = parser.parse_args()

    started = time.time()
    train_dataset = keras.utils.image_dataset_from_directory(
        os.path.join(args.data, "train"), shuffle=True, batch_size=BATCH_SIZE, image_size=IMG_SIZE
    )
    validation_dataset = keras.utils.image_dataset_from_directory(
        os.path.join(args.data, "validation"), shuffle=True, batch_size=BATCH_SIZE, image_size=IMG_SIZE
    )
    train_dataset = train_dataset.prefetch(buffer_size=tf.data.AUTOTUNE)
    validation_dataset = validation_dataset.prefetch(buffer_size=tf.data.AUTOTUNE)

    data_augmentation = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(0.2),
        ]
    )
    preprocess_input = keras.applications.mobilenet_v2.preprocess_input
    base_model = keras.applications.MobileNetV2(input_shape=IMG_SIZE + (3,), include_top=False, weights=args.weights)
    base_model.trainable = False

    inputs = keras.Input(shape=(160, 160, 3))
    x = data_augmentation(inputs)
    x = preprocess_input(x)
    x = base_model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1)(x)
    model = keras.Model(inputs, outputs)

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=BASE_LEARNING_RATE),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0, name="accuracy")],
    )
    phase1_started = time.time()
    history = model.fit(train_dataset, epochs=INITIAL_EPOCHS, validation_data=validation_dataset, verbose=2)
    phase1_s = time.time() - phase1_started

    base_model.trainable = True
    for layer in base_model.layers[:FINE_TUNE_AT]:
        layer.trainable = False
    model.compile(
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        optimizer=keras.optimizers.RMSprop(learning_rate=BASE_LEARNING_RATE / 10),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0, name="accuracy")],
    )
    phase2_started = time.time()
    history_fine = model.fit(
        train_dataset,
        epochs=INITIAL_EPOCHS + FINE_TUNE_EPOCHS,
        initial_epoch=len(history.epoch),
        validation_data=validation_dataset,
        verbose=2,
    )
    phase2_s = time.time() - phase2_started

    result = {
        "phase1_val_accuracy": history.history["val_accuracy"][-1],
        "phase2_val_accuracy": history_fine.history["val_accuracy"][-1],
        "phase1_s": phase1_s,
        "phase2_s": phase2_s,
        "wall_s": time.time() - started,
        "val_accuracy_per_epoch": history.history["val_accuracy"] + history_fine.history["val_accuracy"],
    }
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "val_accuracy_per_epoch"}))


if __name__ == "__main__":
    main()
