"""What an edge app embeds: preprocessing, engine loading, decoding, NMS. numpy only: never imports torch."""
